"""GET /scheduler: the scheduler's batch as JSON for the page, open without a key, following requests as they run."""
import http.client
import json
import threading

from nanollm.serve.scheduler import BLOCK_SIZE, SHORT_ID
from tests.conftest import time_limit
from tests.serve_fixtures import NAME, demo_model, post, serving, slowed, wait_until


def snapshot(server) -> dict:
    """GET /scheduler with no key (the server has one) -> its JSON; the answer must be 200 JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/scheduler")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "application/json"
        return json.loads(response.read())
    finally:
        connection.close()


def test_scheduler_view_needs_no_key_and_starts_empty():
    with serving(demo_model()) as server:
        view = snapshot(server)
    assert view == {"iteration": 0, "running": [], "waiting": []}, view


def test_scheduler_view_follows_a_request_through_the_batch_and_lists_who_waits():
    """max_batch 1: a long request runs (its tokens grow between polls) while a second one waits; both are gone
    from the view once answered. The numbers are the request's own: its usage and the KV blocks its tokens fill."""
    with serving(slowed(demo_model(), 0.02), max_batch=1) as server, time_limit(30):
        answers = {}

        def send(name, prompt, max_tokens):
            answers[name] = post(server, "/v1/completions", {"model": NAME, "prompt": prompt, "temperature": 0,
                                                             "max_tokens": max_tokens})

        long = threading.Thread(target=send, args=("long", "Once upon a time", 60))
        long.start()
        wait_until(lambda: snapshot(server)["running"], what="the long request in the batch")
        first = snapshot(server)
        short = threading.Thread(target=send, args=("short", "Python is", 2))
        short.start()
        wait_until(lambda: snapshot(server)["waiting"], what="the short request waiting")
        wait_until(lambda: snapshot(server)["running"][0]["generated"] > first["running"][0]["generated"],
                   what="the long request's tokens growing")
        later = snapshot(server)  # the long one runs 60 passes of >= 20 ms: it is still running here
        long.join()
        short.join()
        wait_until(lambda: snapshot(server)["running"] == [], what="the batch empty again")
        last = snapshot(server)

    (status, body), (short_status, short_body) = answers["long"], answers["short"]
    assert status == short_status == 200
    [running] = first["running"]
    assert set(running) == {"id", "rows", "generated", "prompt_tokens", "kv_blocks"}
    assert running["id"] == body["id"][-SHORT_ID:] and running["rows"] == 1
    assert running["prompt_tokens"] == body["usage"]["prompt_tokens"]
    [still] = later["running"]
    assert still["id"] == running["id"] and later["iteration"] > first["iteration"]
    assert running["generated"] < still["generated"] < body["usage"]["completion_tokens"]
    cached = still["prompt_tokens"] + still["generated"] - 1  # the last chosen token enters the cache next pass
    assert still["kv_blocks"] == -(-cached // BLOCK_SIZE), still
    assert later["waiting"] == [short_body["id"][-SHORT_ID:]]
    assert last["running"] == [] and last["waiting"] == []
