"""The dashboard in a real headless browser (SPEC §11): Debian's chromium, driven by Playwright.

Run by `.ci/browser`. Every wait is on something the page shows (Playwright's `expect` and
`wait_for_*`), never a sleep. The screenshots the README shows are taken here, into docs/.
"""

import os
import re

import pytest
from playwright.sync_api import expect

from conftest import TOKEN

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


@pytest.fixture(scope="session")
def jobs(stack):
    """Six submissions: two completed, one failed, three still running at the fake."""
    made = []
    for n, prompt in enumerate([
        "a lighthouse in a storm, waves breaking over the rocks",
        "a red kite over green hills at dawn",
        "a harbour at night, boats rocking, lanterns",
        "snow falling on a quiet mountain village",
        "a city street in the rain, neon reflections",
        "a desert caravan at sunset, long shadows",
    ]):
        made.append(stack.submit(prompt, {"order": f"A-{100 + n}", "customer": "Acme"}))
    ids = [job["job_id"] for job in made]
    stack.finish(ids[0])
    stack.finish(ids[1])
    stack.finish(ids[2], "failed")
    # The fake delivers each webhook on its own time: the pages are read once all three are in.
    for job_id, status in [(ids[0], "completed"), (ids[1], "completed"), (ids[2], "failed")]:
        assert stack.call("GET", f"{stack.api}/v1/jobs/{job_id}?wait=30s")["status"] == status
    return ids


@pytest.fixture()
def signed_in(browser, stack, jobs):
    """A browser context that signed in through the form."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(stack.api + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    yield context, page
    context.close()


def row(page, job_id):
    return page.locator(f'#job-rows tr[data-job="{job_id}"]')


def test_sign_in_keeps_an_http_only_strict_session_and_shows_the_jobs(signed_in, jobs):
    context, page = signed_in
    expect(page.locator("#job-rows tr")).to_have_count(len(jobs))
    for job_id in jobs:
        expect(row(page, job_id)).to_be_visible()
    expect(row(page, jobs[0]).locator(".status")).to_have_text("completed")
    expect(row(page, jobs[2]).locator(".status")).to_have_text("failed")
    cookie = next(c for c in context.cookies() if c["name"] == "jobhook_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    # Every control is labelled, and the first Tab reaches the skip link.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == []
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()


def test_a_job_that_changes_moves_to_the_top_without_a_reload(signed_in, stack, jobs):
    _, page = signed_in
    waiting = jobs[3]
    expect(row(page, waiting).locator(".status")).to_have_text(re.compile("pending|in progress"))
    assert page.locator("#job-rows tr").first.get_attribute("data-job") != waiting
    # The stream is open before the change is made (it starts from now).
    page.wait_for_selector('#jobs[data-stream="open"]', state="attached")
    page.evaluate("window.notReloaded = true")
    stack.finish(waiting)
    first = page.locator("#job-rows tr").first
    expect(first).to_have_attribute("data-job", waiting)
    expect(first.locator(".status")).to_have_text("completed")
    expect(first).to_have_class(re.compile("moved"))
    expect(page.locator("#job-rows tr")).to_have_count(len(jobs))
    assert page.evaluate("window.notReloaded") is True
    os.makedirs(DOCS, exist_ok=True)
    page.screenshot(path=os.path.join(DOCS, "dashboard-jobs.png"))


def test_a_jobs_page_plays_its_video_and_refresh_asks_pictory_again(signed_in, stack, jobs):
    _, page = signed_in
    job_id = jobs[0]
    # The archive copies the job's files in the background: wait for it (the page's own
    # session reads the API, as the player does).
    page.wait_for_function("""async (id) => {
        const job = await (await fetch('/v1/jobs/' + encodeURIComponent(id))).json();
        return job.archive && job.archive.status === 'done';
    }""", arg=job_id, polling=100)
    row(page, job_id).get_by_role("link", name=job_id).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(job_id)
    expect(page.locator("#archive-status")).to_contain_text("done")

    # The player's source is jobhook's kept copy, not Pictory's (which Pictory deletes).
    kept = f"/v1/jobs/{job_id}/files/video"
    assert stack.job(job_id)["archive"]["files"]["video"]["url"] == kept
    video = page.locator("video#video")
    expect(video).to_have_attribute("src", kept)
    # It answers bytes to the session cookie (the player sends no token)...
    fetched = page.evaluate("""async (src) => {
        const r = await fetch(src, {credentials: 'same-origin'});
        return {status: r.status, type: r.headers.get('content-type'), size: (await r.arrayBuffer()).byteLength};
    }""", kept)
    assert fetched["status"] == 200 and fetched["type"] == "video/mp4" and fetched["size"] > 0, fetched
    # ...and it plays: the player has frames, and time moves.
    page.evaluate("""() => { const v = document.getElementById('video'); v.muted = true; return v.play(); }""")
    page.wait_for_function("document.getElementById('video').readyState >= 2")
    page.wait_for_function("document.getElementById('video').currentTime > 0")
    # The images are the kept copies too.
    expect(page.locator(f'img[src="/v1/jobs/{job_id}/files/thumbnail"]')).to_have_count(1)
    page.evaluate("document.getElementById('video').pause()")
    os.makedirs(DOCS, exist_ok=True)
    page.screenshot(path=os.path.join(DOCS, "dashboard-job.png"))

    # The history shows the webhook, the Get Job call it caused, and the status change.
    timeline = page.locator("#timeline")
    for text in ["Webhook", "Get Job", "Status"]:
        expect(timeline).to_contain_text(text)
    expect(page.locator("#raw")).to_contain_text('"status": "completed"')

    calls = int(page.locator("#poll-count").inner_text())
    page.get_by_role("button", name="Refresh now").click()
    expect(page.locator(".notice")).to_contain_text("Asked Pictory")
    expect(page.locator("#poll-count")).to_have_text(str(calls + 1))


def test_archive_again_copies_the_files_once_more(signed_in, stack, jobs):
    _, page = signed_in
    job_id = jobs[1]
    page.goto(f"{stack.api}/jobs/{job_id}")
    page.get_by_role("button", name="Archive again").click()
    expect(page.locator(".notice")).to_contain_text("copied to the archive again")
    page.wait_for_function("""async (id) => {
        const job = await (await fetch('/v1/jobs/' + encodeURIComponent(id))).json();
        return job.archive.status === 'done';
    }""", arg=job_id, polling=100)


def test_a_post_without_its_csrf_token_is_refused(signed_in, stack, jobs):
    _, page = signed_in
    job_id = jobs[1]
    page.goto(f"{stack.api}/jobs/{job_id}")
    calls = int(page.locator("#poll-count").inner_text())
    statuses = page.evaluate("""async (id) => {
        const post = (body) => fetch('/jobs/' + encodeURIComponent(id) + '/refresh', {
            method: 'POST', credentials: 'same-origin', redirect: 'manual',
            headers: {'content-type': 'application/x-www-form-urlencoded'}, body});
        return [(await post('')).status, (await post('csrf=forged')).status];
    }""", job_id)
    assert statuses == [403, 403]
    page.reload()
    expect(page.locator("#poll-count")).to_have_text(str(calls))


def test_nothing_scrolls_sideways_at_375_pixels(browser, signed_in, stack, jobs):
    context, _ = signed_in
    phone = browser.new_context(viewport={"width": 375, "height": 800}, storage_state=context.storage_state())
    page = phone.new_page()
    for path in ["/", f"/jobs/{jobs[0]}", f"/jobs/{jobs[2]}", "/ops", "/login"]:
        page.goto(stack.api + path)
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide"
    page.goto(stack.api + "/")
    # The table became cards: each cell says what it is.
    expect(page.locator("#job-rows tr").first.locator('td[data-label="Status"]')).to_be_visible()
    phone.close()


def test_operations_and_sign_out(signed_in, stack):
    _, page = signed_in
    page.get_by_role("link", name="Operations").click()
    expect(page.locator("#calls-per-minute")).to_contain_text("of at most 300")
    expect(page.locator("#paused")).to_have_text("Polling is running.")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(stack.api + "/ops")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fops$"))
