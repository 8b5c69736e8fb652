"""What the server tests share: a server on a free port of 127.0.0.1, clients for it, and the engine's answers.

Servers run in the test process (Server.start: an HTTP thread and the scheduler thread) on the demo model inside
nanollm, which generates ~1000 tokens/s here; `slowed` makes a model's steps slow enough for a test to act while a
request is still running (cancel it, fill the queue).
"""
import http.client
import json
import re
import time
from contextlib import contextmanager

import openai

import nanollm
from nanollm.chat import chat_template_for
from nanollm.loader import DEMO_MODEL
from nanollm.serve import Server
from nanollm.serve.api import chat_eos_ids
from nanollm.serve.scheduler import default_runner

NAME = "demo"
KEY = "sk-test-key"


def demo_model():
    return nanollm.load(DEMO_MODEL)


def slowed(model, seconds: float):
    """The model, each forward pass the server makes with it taking `seconds` longer."""
    return before_each_pass(model, lambda: time.sleep(seconds))


def before_each_pass(model, hook):
    """The model, hook() running before each forward pass the server's scheduler makes with it (a prefill in its
    PagedRunner's add, a batched decode pass in its step); serving() gives the scheduler that runner."""
    model.before_pass = hook
    return model


def hooked_runner(model, max_batch: int):
    """The scheduler's default runner for the model, calling model.before_pass() before each forward pass."""
    runner = default_runner(model, max_batch)
    run = runner._run

    def hooked_run(*args, **kwargs):
        model.before_pass()
        return run(*args, **kwargs)

    runner._run = hooked_run
    return runner


@contextmanager
def serving(model, **options):
    """A started Server on a free port (api_key KEY unless given), closed at the end."""
    if hasattr(model, "before_pass"):
        options = {**options, "runner": hooked_runner(model, options.get("max_batch", 8))}
    server = Server(model, NAME, port=0, **{"api_key": KEY, **options})
    server.start()
    try:
        yield server
    finally:
        server.close(grace_s=5)


def client(server, key: str = KEY) -> openai.OpenAI:
    """The official client; no retries, so a 429 or 503 reaches the test as it was sent."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0, timeout=60)


def post(server, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
    """POST a body (a dict as JSON, or raw bytes) with the key; -> (status, the JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", path, data, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                                                **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get(server, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def metrics(server) -> dict[str, float]:
    """GET /metrics parsed: {'name{labels}': value} for every sample line."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([^#\s]\S*) (\S+)$", text, re.MULTILINE)}


def wait_until(condition, seconds: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {seconds} s"
        time.sleep(0.01)


def assert_error(status: int, body: dict, expected_status: int, param: str | None = None, code: str | None = None):
    """OpenAI's error shape, with the status, param and code expected."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def chat_reference(model, messages: list[dict], **options):
    """What generate gives for a chat request: the template's ids, stopping at EOS and turn ends as the CLI chat."""
    template = chat_template_for(model.tokenizer)
    ids = template.encode(model.tokenizer, messages)
    stop = tuple(options.pop("stop", ())) + template.stop
    return ids, dict(options, eos_token_ids=chat_eos_ids(model), stop=stop)


def is_healthy(server) -> bool:
    """A small request still gets its answer."""
    status, body = post(server, "/v1/completions", {"model": NAME, "prompt": "Hi", "max_tokens": 2})
    return status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")
