"""The stack the browser tests drive: a fake Pictory and jobhook, as their users run them.

`jobhook mock-pictory` (which serves real MP4, JPG and PNG files at its output URLs) and
`jobhook serve` start as child processes on loopback ports, with `api.tokens` set, so the
dashboard asks for a token, and the output archive on, in a temporary folder. Readiness is read from what each prints
when it listens, never waited for with a sleep.
"""

import json
import urllib.parse
import os
import socket
import subprocess
import tempfile
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

TOKEN = "browser-test-token"
SECRET = "browser-test-webhook-secret-0123456789"
JOBHOOK = os.environ.get("JOBHOOK_BIN", "target/debug/jobhook")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, workdir):
        self.procs = []
        mock = subprocess.Popen(
            [JOBHOOK, "mock-pictory", "--listen", "127.0.0.1:0", "--job-duration", "1h", "--seed", "7"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(mock)
        line = mock.stdout.readline()
        assert "base_url" in line, line
        self.pictory_base = line.split('"')[1]
        self.mock = self.pictory_base.rsplit("/pictoryapis", 1)[0]

        public, api = free_port(), free_port()
        self.public = f"http://127.0.0.1:{public}"
        self.api = f"http://127.0.0.1:{api}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBHOOK_")}
        env.update({
            "JOBHOOK_WEBHOOK_SECRET": SECRET,
            "JOBHOOK_API_TOKENS": TOKEN,
            "JOBHOOK_SERVER_LISTEN": f"127.0.0.1:{public}",
            "JOBHOOK_SERVER_API_LISTEN": f"127.0.0.1:{api}",
            "JOBHOOK_SERVER_PUBLIC_URL": self.public,
            "JOBHOOK_DATABASE_URL": f"sqlite://{workdir}/jobhook.db",
            "JOBHOOK_PICTORY_BASE_URL": self.pictory_base,
            "JOBHOOK_PICTORY_API_KEY": "pictai_browser_test",
            # Only webhooks and the refresh button ask Pictory: poll counts stay predictable.
            "JOBHOOK_RECONCILE_GRACE": "1h",
            # Completed jobs' files are kept in a folder: the player plays jobhook's copy.
            "JOBHOOK_ARCHIVE_URL": f"file://{workdir}/archive",
            "JOBHOOK_LOG_FORMAT": "json",
            "RUST_LOG": "info",
        })
        serve = subprocess.Popen([JOBHOOK, "serve"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        self.procs.append(serve)
        for line in serve.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "jobhook is listening":
                break
        else:
            raise RuntimeError("jobhook serve exited before listening")
        # Keep reading its log so the pipe never fills up.
        self._drain = subprocess.Popen(["cat"], stdin=serve.stderr, stdout=subprocess.DEVNULL)

    def call(self, method, url, body=None, token=True):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("content-type", "application/json")
        if token:
            request.add_header("authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read() or b"null")

    def submit(self, prompt, metadata):
        return self.call("POST", f"{self.api}/v1/videos", {"prompt": prompt, "metadata": metadata})

    def job(self, job_id):
        return self.call("GET", f"{self.api}/v1/jobs/{job_id}")

    def finish(self, job_id, status="completed"):
        """Has the fake end a job and deliver its webhook, to the URL jobhook gave it."""
        jobs = self.call("GET", f"{self.mock}/_mock/jobs", token=False)["data"]
        webhook = next(j["request"]["webhook"] for j in jobs if j["id"] == job_id)
        query = urllib.parse.urlencode({"webhook": webhook})
        self.call("PUT", f"{self.mock}/_mock/jobs/{job_id}?{query}", {"status": status}, token=False)

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=20)
        self._drain.wait(timeout=5)


@pytest.fixture(scope="session")
def stack():
    with tempfile.TemporaryDirectory() as workdir:
        running = Stack(workdir)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()
