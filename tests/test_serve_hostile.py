"""nanollm.serve against what clients get wrong and what the world does: every bad request is one answer in OpenAI's
error shape with the documented status, param and code, never a dropped connection or a traceback, and the server
answers the next request. Clients that disconnect mid-stream or while waiting are cancelled; a full queue is a 429;
SIGTERM and SIGINT let the request in flight finish and exit 0; start-up errors are one line and exit 1.
"""
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.loader import DEMO_MODEL
from nanollm.serve.api import MAX_BODY_BYTES
from tests.conftest import PROJECT_ROOT, time_limit
from tests.serve_fixtures import (
    KEY,
    NAME,
    assert_error,
    before_each_pass,
    client,
    demo_model,
    get,
    is_healthy,
    metrics,
    post,
    serving,
    slowed,
    wait_until,
)

BASE = {"model": NAME, "prompt": "Hello", "max_tokens": 3}


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def server(model):
    with serving(model) as s:
        yield s


@pytest.mark.parametrize("body", [b"{", b"", b"[1, 2]", b"null", b'"text"', b'{"model": NaN}', b"\xff\xfe{}",
                                  b"[" * 100_000, b'{"model": "demo", "prompt": "\\ud800"}'],
                         ids=["unclosed", "empty", "array", "null", "string", "NaN", "not utf-8", "deep", "surrogate"])
def test_a_body_that_is_not_a_json_object_of_text_is_a_400(server, body):
    with time_limit(10):
        status, answer = post(server, "/v1/completions", body)
        assert_error(status, answer, 400)
        assert is_healthy(server)


@pytest.mark.parametrize("field, value", [("temperature", "0.5"), ("max_tokens", 2.5), ("max_tokens", True),
                                          ("n", [1]), ("stream", "yes"), ("stop", 5), ("stop", ["a"] * 5),
                                          ("logit_bias", {"x": 1}), ("logit_bias", {"1024": 1}),
                                          ("logit_bias", {"5": 101}), ("seed", -1), ("top_p", 0), ("logprobs", 6),
                                          ("top_k", -2), ("presence_penalty", 3), ("prompt", [1, "a"]),
                                          ("prompt", [2000]), ("prompt", ""), ("stream_options", {"x": 1}),
                                          ("prompt", ["a"] * 17), ("n", 17)])
def test_a_wrong_type_or_value_is_a_400_naming_the_field(server, field, value):
    status, answer = post(server, "/v1/completions", {**BASE, field: value})
    assert_error(status, answer, 400, param=field)
    assert field in answer["error"]["message"] or field == "prompt"


@pytest.mark.parametrize("field, param", [("frobnicate", "frobnicate"), ("tools", "tools"), ("echo", "echo")])
def test_an_unknown_or_unsupported_field_is_a_400_naming_it(server, field, param):
    status, answer = post(server, "/v1/completions", {**BASE, field: 1})
    assert_error(status, answer, 400, param=param)
    assert field in answer["error"]["message"]


@pytest.mark.parametrize("messages, param", [([], "messages"), ([{"role": "robot", "content": "x"}],
                                                                 "messages[0].role"),
                                             ([{"role": "user", "content": 3}], "messages[0].content"),
                                             ([{"role": "user", "content": "x", "name": "a"}], "messages[0].name"),
                                             (["hi"], "messages[0]")])
def test_bad_chat_messages_are_a_400_naming_the_message(server, messages, param):
    status, answer = post(server, "/v1/chat/completions", {"model": NAME, "messages": messages})
    assert_error(status, answer, 400, param=param)


FIELDS = ("temperature", "top_p", "n", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
          "logit_bias", "logprobs", "top_k", "min_p", "repetition_penalty", "stream", "prompt")
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                                        allow_infinity=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@settings(max_examples=60)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_value_of_any_field_is_an_answer_or_a_400_naming_it(server, field, value):
    """Fuzzed: whatever JSON a field holds, the answer is a completion or a 400 naming that field (or, for a
    max_tokens beyond the context, OpenAI's context_length_exceeded)."""
    with time_limit(20):
        status, answer = post(server, "/v1/completions", {**BASE, "max_tokens": 3, field: value}
                              if field != "stream" else {**BASE, field: value})
    if status == 200:
        assert answer["object"] == "text_completion" and answer["choices"], answer
    else:
        assert_error(status, answer, 400)
        assert answer["error"]["param"] in (field, "prompt"), (field, answer)


def test_an_unknown_model_path_or_method_is_a_404_or_405(server):
    assert_error(*post(server, "/v1/completions", {**BASE, "model": "gpt-9"}), 404, "model", "model_not_found")
    assert_error(*post(server, "/v1/embeddings", BASE), 404, code="unknown_url")
    status, text = get(server, "/v1/completions")
    assert_error(status, json.loads(text), 405)


def test_a_wrong_or_missing_key_is_a_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="wrong").completions.create(model=NAME, prompt="Hi", max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert_error(*post(server, "/v1/completions", BASE, headers={"Authorization": ""}), 401, code="invalid_api_key")
    assert get(server, "/metrics")[0] == 200  # metrics stay readable by a scraper without the key, as vLLM's


def test_a_prompt_beyond_the_context_is_openais_context_length_exceeded(server, model):
    api, context = client(server), model.config.max_seq_len
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model=NAME, prompt="word " * context, max_tokens=5)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert f"maximum context length is {context} tokens" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=context)
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    assert is_healthy(server)


def raw_exchange(server, data: bytes, read: bool = True) -> bytes:
    """Send raw bytes; -> everything the server answers until it closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR) if not read else None
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            if not read:
                break
        return answer


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def read_until(s: socket.socket, marker: bytes, answer: bytes = b"") -> bytes:
    """Read a raw connection until `marker` has come after what was read already (`answer`), or fail if it closes
    first; -> everything read."""
    while marker not in answer:
        chunk = s.recv(65536)
        assert chunk, answer[-300:]
        answer += chunk
    return answer


def read_answer(s: socket.socket) -> tuple[int, dict]:
    """One whole HTTP answer read from a raw connection: (status, its JSON body)."""
    response = http.client.HTTPResponse(s)
    response.begin()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400), (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431), (b"PUT /v1/models HTTP/1.1\r\n\r\n", 501),
    (b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n", 411),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: " + str(MAX_BODY_BYTES + 1).encode() + b"\r\n\r\n", 413)],
    ids=["request line", "long url", "long header", "method", "no length", "too large"])
def test_broken_http_is_answered_in_the_same_json_shape(server, data, status):
    """Even the standard library's own refusals come as OpenAI's error object; then the connection closes."""
    if status == 413:  # the key must pass before the body's size is looked at
        data = data.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
    with time_limit(15):
        got, body = status_and_error(raw_exchange(server, data))
        assert_error(got, body, status)
        assert is_healthy(server)


def test_a_body_shorter_than_its_length_is_dropped_and_the_server_goes_on(server):
    head = f"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
    with time_limit(15):
        assert raw_exchange(server, head.encode() + b'{"model"', read=False) == b""
        assert is_healthy(server)


def test_a_client_that_resets_a_kept_alive_connection_prints_no_traceback(server, capfd):
    """The reset reaches the server while it waits for the next request line of a kept-alive connection: the
    standard library would print a traceback for it (socketserver.handle_error); it is not an error of the server."""
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset (RST)
        s.close()
    assert is_healthy(server)
    assert "Traceback" not in capfd.readouterr().err


def stream_request(server, body: dict) -> socket.socket:
    """A raw connection with a request sent (streaming or not); the caller reads or closes it."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: "
              f"{len(data)}\r\n\r\n".encode() + data)
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_is_cancelled_and_frees_its_place(stream):
    """Mid-stream (after its first chunk) or while waiting for a whole answer: the request leaves the batch at once,
    long before its 200 tokens of >= 10 ms each would have run."""
    with serving(slowed(demo_model(), 0.01), max_batch=2) as server, time_limit(20):
        s = stream_request(server, {**BASE, "max_tokens": 200, "temperature": 0, "stream": stream})
        if stream:
            read_until(s, b"data: {")  # the first chunk came
        else:
            wait_until(lambda: metrics(server)["nanollm_requests_running"] == 1, what="the request running")
        s.close()
        wait_until(lambda: metrics(server)['nanollm_requests_total{outcome="cancelled"}'] == 1, 5, "a cancel")
        assert metrics(server)["nanollm_requests_running"] == 0
        assert metrics(server)["nanollm_generation_tokens_total"] < 100
        assert is_healthy(server)


def test_a_full_queue_is_a_429_and_the_server_recovers():
    with serving(slowed(demo_model(), 0.02), max_batch=1, max_queue=1) as server, time_limit(30):
        running = stream_request(server, {**BASE, "max_tokens": 100, "stream": True})
        wait_until(lambda: metrics(server)["nanollm_requests_running"] == 1, what="the first request running")
        waiting = stream_request(server, {**BASE, "max_tokens": 2})
        wait_until(lambda: metrics(server)["nanollm_requests_waiting"] == 1, what="the second request waiting")
        with pytest.raises(openai.RateLimitError) as e:
            client(server).completions.create(model=NAME, prompt="Hi", max_tokens=2)
        assert e.value.status_code == 429 and e.value.code == "queue_full"
        assert e.value.response.headers["Retry-After"] == "1"
        running.close()  # its cancel lets the waiting one run, then the server takes new requests again
        status, body = read_answer(waiting)
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        waiting.close()
        assert is_healthy(server)


def start_cli(*args) -> tuple[subprocess.Popen, int]:
    """python -m nanollm.serve on port 0; -> (the process, the port its first line names)."""
    process = subprocess.Popen([sys.executable, "-m", "nanollm.serve", *args], cwd=PROJECT_ROOT,
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    assert "serving" in line, line
    return process, int(line.split("http://127.0.0.1:")[1].split("/")[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_request_in_flight_finish_and_exits_0(sig):
    with time_limit(60):
        process, port = start_cli("--model", str(DEMO_MODEL), "--port", "0", "--served-model-name", NAME)
        try:
            server = type("Address", (), {"port": port})
            s = stream_request(server, {**BASE, "max_tokens": 200, "temperature": 0, "stream": True})
            answer = read_until(s, b"data: {")
            assert answer.startswith(b"HTTP/1.1 200")
            os.kill(process.pid, sig)
            answer = read_until(s, b"data: [DONE]\n\n\r\n0\r\n\r\n", answer)
            assert b'"finish_reason": "length"' in answer  # all 200 tokens came
            assert process.wait(timeout=30) == 0
            assert "shutting down" in process.stderr.read()
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
        finally:
            process.kill()
            process.wait()


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanollm.serve", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def test_start_up_errors_are_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_cli("--model", str(DEMO_MODEL), "--port", str(taken.getsockname()[1]))
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((DEMO_MODEL / name).read_bytes())
    for result, words in ((busy, "Address already in use"), (run_cli("--model", str(tmp_path / "missing")), "missing"),
                          (run_cli("--model", str(no_tokenizer)), "tokenizer files")):
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    bad_flag = run_cli("--max-batch", "0")
    assert bad_flag.returncode == 2 and bad_flag.stderr.startswith("error: ") and "--max-batch" in bad_flag.stderr


def test_a_waiting_request_gets_a_503_when_the_server_shuts_down():
    """close(): the running request finishes, the one still waiting is told the server shut down."""
    with time_limit(30), serving(slowed(demo_model(), 0.02), max_batch=1) as server:
        running = stream_request(server, {**BASE, "max_tokens": 30, "stream": True})
        wait_until(lambda: metrics(server)["nanollm_requests_running"] == 1, what="the first request running")
        waiting = stream_request(server, {**BASE, "max_tokens": 2})
        wait_until(lambda: metrics(server)["nanollm_requests_waiting"] == 1, what="the second request waiting")
        closing = threading.Thread(target=server.close, kwargs={"grace_s": 10})
        closing.start()
        status, body = read_answer(waiting)
        assert_error(status, body, 503, code="shutting_down")
        answer = read_until(running, b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert b'"finish_reason": "length"' in answer
        closing.join()


def failing_once(model, error: Exception, call: int):
    """The model, its `call`-th forward pass in the server (1: the first request's prefill) raising `error`."""
    calls = []

    def maybe_fail():
        calls.append(1)
        if len(calls) == call:
            raise error

    return before_each_pass(model, maybe_fail)


@pytest.mark.parametrize("error, status, words", [(RuntimeError("boom"), 500, "RuntimeError: boom"),
                                                  (MemoryError("Unable to allocate 9 TiB"), 503, "9 TiB")])
def test_an_engine_failure_fails_its_request_alone(error, status, words):
    """The prefill fails: the request gets a JSON status naming the failure, and the next request is served."""
    with serving(failing_once(demo_model(), error, call=1)) as server, time_limit(15):
        got, body = post(server, "/v1/completions", BASE)
        assert_error(got, body, status)
        assert words in body["error"]["message"] and body["error"]["type"] == "server_error"
        assert metrics(server)['nanollm_requests_total{outcome="failed"}'] == 1
        assert is_healthy(server)


def test_an_engine_failure_mid_stream_is_an_error_event_then_done():
    """After the headers went out, the failure travels down the stream as OpenAI's error object, then [DONE]."""
    with serving(failing_once(demo_model(), RuntimeError("boom"), call=3)) as server, time_limit(15):
        s = stream_request(server, {**BASE, "max_tokens": 10, "temperature": 0, "stream": True})
        answer = read_until(s, b"data: [DONE]\n\n\r\n0\r\n\r\n")
        s.close()
        events = [line[len(b"data: "):] for line in answer.split(b"\n") if line.startswith(b"data: {")]
        assert json.loads(events[-1])["error"]["message"] == "the engine failed: RuntimeError: boom"
        assert all("choices" in json.loads(e) for e in events[:-1])
        assert is_healthy(server)


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", 3]),
                                 "content": JSON | st.text(max_size=20)}, optional={"name": JSON})


@settings(max_examples=40)
@given(messages=st.lists(MESSAGE, max_size=3) | JSON)
def test_any_messages_are_an_answer_or_a_400_naming_them(server, messages):
    with time_limit(20):
        status, answer = post(server, "/v1/chat/completions", {"model": NAME, "messages": messages, "max_tokens": 2})
    if status == 200:
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
    else:
        assert_error(status, answer, 400)
        assert answer["error"]["param"].startswith("messages"), answer


def test_a_request_still_running_after_the_grace_period_is_cancelled_with_a_503_event():
    with time_limit(30), serving(slowed(demo_model(), 0.02)) as server:
        s = stream_request(server, {**BASE, "max_tokens": 200, "stream": True})
        answer = read_until(s, b"data: {")
        server.close(grace_s=0.2)  # 200 steps of >= 20 ms cannot finish in 0.2 s
        answer = read_until(s, b"data: [DONE]\n\n\r\n0\r\n\r\n", answer)
        error = json.loads(answer.split(b"data: ")[-2].split(b"\n\n")[0])["error"]
        assert error["code"] == "shutting_down" and "before this request finished" in error["message"]
