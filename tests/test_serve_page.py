"""The page at GET /: served whole with nothing from elsewhere, and used in a real browser as a learner would.

The browser is Debian's headless Chromium (.ci/run installs it), driven over the DevTools protocol
(chromedevtools.github.io/devtools-protocol) on --remote-debugging-pipe: the browser reads commands, JSON messages
each ended by a NUL byte, from its fd 3 and writes answers and events to its fd 4. No Python package is needed; the
test types into the page's fields, clicks Send and reads the page back with Runtime.evaluate.
"""
import http.client
import json
import os
import re
import select
import shutil
import subprocess
import time

import pytest

from tests.serve_fixtures import (
    KEY,
    NAME,
    demo_model,
    metrics,
    post,
    serving,
    slowed,
    wait_until,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KV_SAMPLES = {'nanollm_kv_blocks{state="used"}', 'nanollm_kv_blocks{state="free"}',
              'nanollm_kv_blocks{state="cached"}', "nanollm_prefix_cache_hits_total"}  # from the first request on
STEP_S = 0.05  # each model step slowed this much: a reply lasts several of the page's 500 ms polls of /metrics


def fetch_page(server):
    """GET / with no key -> (status, Content-Type, the page)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        connection.close()


def test_the_page_is_served_whole_without_a_key_and_without_anything_from_elsewhere():
    with serving(demo_model()) as server:  # a server with --api-key: the page still loads, to ask for the key
        status, content_type, page = fetch_page(server)
        reported = set(metrics(server))
    assert status == 200 and content_type == "text/html; charset=utf-8"
    assert page.startswith("<!doctype html>") and "</html>" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|href|action)\s*=", page), "no asset or link to load: everything is inline"
    fetched = re.findall(r"fetch\(\s*([^,)]+)", page)
    assert sorted(set(fetched)) == ['"/metrics"', '"/scheduler"', '"/v1/chat/completions"', '"/v1/models"'], fetched
    shown = set(re.findall(r"'(nanollm_[^']+)'", page))
    assert len(shown) == 8 and shown - reported <= KV_SAMPLES, shown - reported


class Chromium:
    """A headless Chromium on the DevTools protocol over pipes; `evaluate` runs JavaScript in its one page."""

    def __init__(self, profile, url: str):
        to_browser, self.commands = os.pipe()
        self.answers, from_browser = os.pipe()
        # bash puts the pipes on the fds 3 and 4 the browser reads and writes, whatever numbers they have here
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', CHROMIUM, "--headless=new",
             "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.pending, self.next_id, self.session = b"", 0, None
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, timeout_s: float = 20.0, **params) -> dict:
        """One command; its answer's result (events that come meanwhile are skipped)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self.read(time.monotonic() + timeout_s)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                return answer["result"]

    def read(self, deadline: float) -> dict:
        while b"\0" not in self.pending:
            ready, _, _ = select.select([self.answers], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium did not answer in time"
            data = os.read(self.answers, 1 << 16)
            assert data, "Chromium closed its DevTools pipe"
            self.pending += data
        message, self.pending = self.pending.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def text(self, element_id: str) -> str:
        """The element's text; "" while the page is still loading."""
        return self.text_of(f"#{element_id}")

    def text_of(self, selector: str) -> str:
        return self.evaluate(f"document.querySelector({selector!r})?.textContent ?? ''")

    def close(self):
        self.process.kill()
        self.process.wait()
        os.close(self.commands)
        os.close(self.answers)


@pytest.fixture
def browser_and_server(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian's package `chromium`; .ci/run installs it)")
    with serving(slowed(demo_model(), STEP_S)) as server:
        browser = Chromium(tmp_path / "profile", f"http://127.0.0.1:{server.port}/")
        try:
            yield browser, server
        finally:
            browser.close()


def test_in_chromium_a_message_gets_a_streamed_reply_and_the_scheduler_view_follows(browser_and_server):
    browser, server = browser_and_server
    # The server has --api-key: the page says so until the key is typed, then names the model.
    wait_until(lambda: "API key" in browser.text("model"), what="the page's 401 message")
    browser.evaluate(f"document.getElementById('key').value = {KEY!r};"
                     "document.getElementById('key').dispatchEvent(new Event('change'))")
    wait_until(lambda: browser.text("model") == NAME, what="the model's name on the page")
    wait_until(lambda: browser.text("tokens") == "0", what="the scheduler view's first poll")
    assert browser.text("running") == "0" and browser.text("waiting") == "0"

    browser.evaluate("document.getElementById('temperature').value = '0';"
                     "document.getElementById('max_tokens').value = '24';"
                     "document.getElementById('message').value = 'Hello';"
                     "document.getElementById('send').click()")
    running_seen, partial_replies, batch_rows = set(), set(), set()
    deadline = time.monotonic() + 20
    while browser.evaluate("document.getElementById('send').disabled") is not False or not partial_replies:
        assert time.monotonic() < deadline, "the reply did not finish within 20 s"
        running_seen.add(browser.text("running"))
        batch_rows.add(browser.evaluate("[...document.querySelectorAll('#batch_rows tr')]"
                                        ".map((row) => row.cells[0].textContent + ' ' + row.cells[1].textContent)"
                                        ".join('|')"))
        partial_replies.add(browser.evaluate("document.querySelector('.assistant')?.textContent ?? ''"))
        time.sleep(0.02)
    reply = browser.evaluate("document.querySelector('.assistant').textContent")
    assert browser.evaluate("document.querySelectorAll('.error').length") == 0

    status, body = post(server, "/v1/chat/completions", {"model": NAME, "messages": [{"role": "user",
                        "content": "Hello"}], "temperature": 0, "max_tokens": 24})
    assert status == 200 and reply == body["choices"][0]["message"]["content"] and reply
    assert len(partial_replies - {"", reply}) >= 1, "the reply should appear piece by piece, as it streams"
    assert "1" in running_seen, f"the scheduler view never showed the request running: {running_seen}"
    # The batch table (GET /scheduler) showed the page's own request as it streamed: one row, its id's tail, 1 row.
    shown = batch_rows - {""}
    assert len(shown) == 1 and re.fullmatch("[0-9a-f]{6} 1", *shown), batch_rows
    wait_until(lambda: browser.text("batch_rows") == "" and browser.text("waiting_ids") == "none",
               what="the batch table empty again on the page")
    generated = body["usage"]["completion_tokens"] * 2  # the page's request and the reference's
    wait_until(lambda: browser.text("tokens") == str(generated), what=f"{generated} tokens generated on the page")
    wait_until(lambda: browser.text("running") == "0", what="the batch empty again on the page")
    reported = metrics(server)
    kv = {cell: f"{reported[sample]:g}" if sample in reported else "n/a"
          for cell, sample in (("kv_used", 'nanollm_kv_blocks{state="used"}'),
                               ("kv_free", 'nanollm_kv_blocks{state="free"}'))}
    wait_until(lambda: {cell: browser.text(cell) for cell in kv} == kv, what=f"the KV blocks as /metrics says: {kv}")

    # A refused request is one line on the page, in the server's words; the conversation goes on.
    browser.evaluate("document.getElementById('max_tokens').value = '0';"
                     "document.getElementById('message').value = 'Again';"
                     "document.getElementById('send').click()")
    wait_until(lambda: "max_tokens" in browser.text_of(".error"), what="the server's 400 message on the page")
    assert browser.evaluate("document.getElementById('send').disabled") is False
