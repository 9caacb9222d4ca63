// jobhook's dashboard: the little it needs beyond server-rendered HTML. Pages work without it;
// with it, the jobs table follows the event stream (GET /v1/events, authorised by the session
// cookie) and a job's page says when the job changed.
"use strict";

(function () {
  function announce(text) {
    var region = document.getElementById("live-status");
    if (region) region.textContent = text;
  }

  function idOf(job) {
    return job.job_id || job.submission_id || "";
  }

  function statusLabel(status) {
    return String(status || "").replace(/_/g, " ");
  }

  // --- The jobs table: changed jobs move to the top. ---
  function followJobs(table) {
    var body = document.getElementById("job-rows");
    var inserting = table.dataset.live === "insert";
    var wanted = (table.dataset.statuses || "").split(",").filter(Boolean);
    var pending = [];
    var timer = null;
    var busy = false;

    function rowOf(id) {
      var rows = body.querySelectorAll("tr[data-job]");
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].dataset.job === id) return rows[i];
      }
      return null;
    }

    function flush() {
      timer = null;
      if (busy || pending.length === 0) return;
      var ids = pending.splice(0, 50);
      var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
      busy = true;
      fetch("/live/rows?" + query, { credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return ""; }
          return response.ok ? response.text() : "";
        })
        .then(function (html) {
          if (!html) return;
          var holder = document.createElement("template");
          holder.innerHTML = "<table><tbody>" + html + "</tbody></table>";
          var fresh = holder.content.querySelectorAll("tr[data-job]");
          for (var i = 0; i < fresh.length; i++) {
            var row = fresh[i];
            var old = rowOf(row.dataset.job);
            if (inserting) {
              if (old) old.remove();
              body.insertBefore(row, body.firstChild);
            } else if (old) {
              old.replaceWith(row);
            } else {
              continue;
            }
            row.classList.add("moved");
            announce("Job " + row.dataset.job + " is now " + statusLabel(row.dataset.status));
          }
          var empty = document.getElementById("no-jobs");
          if (empty && body.children.length > 0) empty.remove();
          // The page stays a page: the oldest rows go as new ones come in.
          while (inserting && body.children.length > 100) body.lastElementChild.remove();
        })
        .catch(function () { /* the next change tries again */ })
        .then(function () {
          busy = false;
          if (pending.length) schedule();
        });
    }

    function schedule() {
      // A burst of changes becomes one request.
      if (!timer) timer = setTimeout(flush, 150);
    }

    var stream = new EventSource("/v1/events");
    stream.addEventListener("open", function () {
      var note = document.getElementById("live-note");
      if (note) note.hidden = false;
      table.dataset.stream = "open";
    });
    stream.addEventListener("job.updated", function (event) {
      var job;
      try { job = JSON.parse(event.data); } catch (e) { return; }
      var id = idOf(job);
      if (!id) return;
      var belongs = wanted.length === 0 || wanted.indexOf(job.status) >= 0;
      var present = rowOf(id);
      if (!belongs) {
        if (present && inserting) present.remove();
        return;
      }
      if (!present && !inserting) return;
      var at = pending.indexOf(id);
      if (at >= 0) pending.splice(at, 1);
      pending.push(id);
      schedule();
    });
  }

  // --- A job's page: say when the job changed. ---
  function followJob(section) {
    var id = section.dataset.job;
    var stream = new EventSource("/v1/events?job_id=" + encodeURIComponent(id));
    stream.addEventListener("open", function () { section.dataset.stream = "open"; });
    stream.addEventListener("job.updated", function (event) {
      var job;
      try { job = JSON.parse(event.data); } catch (e) { return; }
      var badge = document.getElementById("job-status");
      if (badge) {
        badge.textContent = statusLabel(job.status);
        badge.className = "status s-" + job.status;
      }
      var banner = document.getElementById("changed");
      if (banner) banner.hidden = false;
      announce("This job is now " + statusLabel(job.status));
    });
  }

  // --- Ages ("4 min ago") stay true while a page is open. ---
  function age(ms) {
    var ahead = ms < 0;
    var s = Math.floor(Math.abs(ms) / 1000);
    var text = s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min"
      : s < 86400 ? Math.floor(s / 3600) + " h" : Math.floor(s / 86400) + " d";
    return ahead ? "in " + text : text + " ago";
  }

  function refreshAges() {
    var now = Date.now();
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var at = Date.parse(times[i].getAttribute("datetime"));
      if (!isNaN(at)) times[i].textContent = age(now - at);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("jobs");
    if (table && window.EventSource) followJobs(table);
    var job = document.getElementById("job");
    if (job && job.dataset.job && window.EventSource) followJob(job);
    setInterval(refreshAges, 30000);
  });
})();
