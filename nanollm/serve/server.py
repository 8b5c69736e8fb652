"""The HTTP side: the standard library's ThreadingHTTPServer, one thread per connection, speaking the OpenAI API.

    GET  /v1/models              the one model served
    POST /v1/completions         body --api.read_request--> Request --scheduler.Job--> Tokens --responses.Choices-->
    POST /v1/chat/completions    one JSON response, or server-sent events as the tokens come
    GET  /metrics                metrics.Metrics in Prometheus' text format
    GET  /scheduler              Scheduler.snapshot as JSON: which requests are in the batch now, and who waits
    GET  /                       page.html: a learner chats with the model and watches /metrics, through this API

A handler thread does everything but run the model: it reads and checks the request, encodes the prompt, submits a
Job to the scheduler thread and relays what comes back. Streams are server-sent events as OpenAI sends them
(html.spec.whatwg.org/multipage/server-sent-events.html): `data: {chunk}` and a blank line per chunk, `data: [DONE]`
last, in HTTP/1.1 chunked transfer encoding, so the connection stays open for the client's next request.

Every answer is JSON. A refusal is OpenAI's error object with its status (api.APIError); even the standard library's
own refusals (a malformed request line, headers too long) come out in that shape (`Handler.send_error`). An
unexpected failure is a 500 naming the exception; its traceback goes to the server's stderr, never to the client.
A client that goes away (closes the connection, mid-stream or while waiting) cancels its request at the scheduler's
next iteration, which frees its place in the batch and its KV cache.
"""
import hmac
import json
import queue
import select
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit

from ..chat import chat_template_for
from ..files import read_bytes
from ..paged_runner import PagedRunner
from .api import MAX_BODY_BYTES, APIError, parse_json, read_request
from .metrics import Metrics
from .responses import Choices
from .scheduler import Job, Scheduler, default_runner

REQUEST_TIMEOUT_S = 60.0  # a connection silent this long (mid-request, or idle between requests) is closed
POLL_S = 0.05  # how often a handler waiting for tokens checks that its client is still there
SHUTDOWN_GRACE_S = 20.0  # SIGTERM: requests in flight get this long to finish (Kubernetes waits 30 s by default)
LISTEN_BACKLOG = 128  # connections the kernel queues before accept (the standard library's 5 drops bursts)
PAGE = Path(__file__).with_name("page.html")  # shipped as package data (setup.py)


class ClientGone(Exception):
    """The client closed its connection: there is no one to answer."""


class HTTPServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request, client_address):
        """A client that drops a kept-alive connection (the reset arrives while the next request line is read) is
        not an error of the server's: socketserver would print a traceback for it. Anything else still is one."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class Server:
    """One model served over HTTP: `start()` returns at once, `close()` shuts down as SIGTERM asks (see __main__)."""

    def __init__(self, model, name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_batch: int = 8, max_queue: int = 64, runner: PagedRunner | None = None):
        if model.tokenizer is None:
            raise ValueError("nanollm.serve needs a model with tokenizer files: the OpenAI API speaks text")
        self.model, self.name, self.api_key = model, name, api_key
        self.template = chat_template_for(model.tokenizer)
        self.metrics = Metrics()
        # The KV pool now (default: scheduler.default_runner), so that a model the paged runner refuses (LongRoPE)
        # or a pool too large fails here, before the server listens.
        self.scheduler = Scheduler(max_batch, max_queue, self.metrics, runner or default_runner(model, max_batch))
        self.created = int(time.time())
        self.httpd = HTTPServer((host, port), Handler)  # binds now: a port in use fails here, before any thread
        self.httpd.app = self
        self.answering = 0  # requests whose handler has not finished its answer
        self.idle = threading.Condition()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.scheduler.start()
        threading.Thread(target=self.httpd.serve_forever, name="nanollm-http", daemon=True).start()

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting connections, let requests in flight finish (up to grace_s, then cancel them), wait for
        their answers to be written, and release the port."""
        self.httpd.shutdown()
        self.scheduler.stop(grace_s)
        with self.idle:
            self.idle.wait_for(lambda: self.answering == 0, timeout=REQUEST_TIMEOUT_S)
        self.httpd.server_close()

    @contextmanager
    def answering_one(self):
        with self.idle:
            self.answering += 1
        try:
            yield
        finally:
            with self.idle:
                self.answering -= 1
                self.idle.notify_all()

    def check_key(self, authorization: str | None) -> None:
        """--api-key: every /v1/ request carries `Authorization: Bearer KEY` (compared in constant time)."""
        if self.api_key is None:
            return
        given = (authorization or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise APIError(401, "Incorrect API key provided (send the header Authorization: Bearer KEY)",
                           code="invalid_api_key")

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "nanollm", "max_model_len": self.model.config.max_seq_len}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams
    server_version = "nanollm"
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self):
        self.route()

    do_POST = do_GET

    def route(self) -> None:
        app: Server = self.server.app
        self.body_read = False  # an answer sent before the body was read closes the connection (send_body)
        path = urlsplit(self.path).path
        with app.answering_one():
            try:
                self.answer(app, path)
            except (ClientGone, ConnectionError, TimeoutError):  # the client left, or stopped reading our answer
                self.close_connection = True

    def answer(self, app: Server, path: str) -> None:
        """Route one request; a refusal is answered in OpenAI's shape, and so is a bug (500, traceback to stderr)."""
        try:
            routes = ROUTES.get(path)
            if routes is None:
                raise APIError(404, f"Invalid URL ({self.command} {path[:200]})", code="unknown_url")
            if self.command not in routes:
                raise APIError(405, f"{path} takes {' or '.join(routes)}, not {self.command}",
                               code="method_not_allowed")
            if path.startswith("/v1/"):
                app.check_key(self.headers.get("Authorization"))
            routes[self.command](self, app)
        except APIError as e:
            self.send_json(e.status, e.body())
        except (ClientGone, ConnectionError, TimeoutError):
            raise
        except Exception as e:  # noqa: BLE001 -- a bug must cost one request, never the server
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error").body())

    # -- endpoints -----------------------------------------------------------------------------------------------

    def get_models(self, app: Server) -> None:
        self.send_json(200, app.models())

    def get_page(self, app: Server) -> None:
        """The page needs no key (it asks for one); it is read at each request, so an edit shows on reload."""
        self.send_body(200, read_bytes(PAGE), "text/html; charset=utf-8")

    def get_metrics(self, app: Server) -> None:
        running, waiting = app.scheduler.counts()
        self.send_body(200, app.metrics.render(running, waiting).encode(), "text/plain; version=0.0.4")

    def get_scheduler(self, app: Server) -> None:
        """No key, like /metrics and the page that polls it: it shows counts and short id tails, never a prompt's
        or a reply's text."""
        self.send_json(200, app.scheduler.snapshot())

    def post_completions(self, app: Server) -> None:
        self.generate(app, "completions")

    def post_chat(self, app: Server) -> None:
        self.generate(app, "chat")

    def generate(self, app: Server, kind: str) -> None:
        request = read_request(kind, parse_json(self.read_body()), app.model, app.name, app.template)
        try:
            job = Job(app.model, request)
        except ValueError as e:  # what the engine's Batch refuses for these rows and settings
            raise APIError(400, str(e)) from None
        app.scheduler.submit(job)
        try:
            choices = Choices(request, app.model.tokenizer)
            self.stream(job, choices) if request.stream else self.whole(job, choices)
        finally:
            job.cancel()  # nothing when it finished; otherwise its client left or its handler failed

    def whole(self, job: Job, choices: Choices) -> None:
        for tokens in self.events(job):
            for token in tokens:
                choices.add(token)
        self.send_json(200, choices.body())

    def stream(self, job: Job, choices: Choices) -> None:
        """Chunks as the tokens come. The headers wait for the first tokens (the prefill's), so that a failure
        until then is still an HTTP status; a failure after them is an error event, then [DONE], as vLLM sends."""
        events = self.events(job)
        first = next(events, [])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            opening = choices.first_chunk()
            if opening is not None:
                self.send_event(json.dumps(opening))
            for tokens in chain([first], events):
                for token in tokens:
                    chunk = choices.chunk(token, choices.add(token))
                    if chunk is not None:
                        self.send_event(json.dumps(chunk))
            if job.request.include_usage:
                self.send_event(json.dumps(choices.usage_chunk()))
        except APIError as e:
            self.send_event(json.dumps(e.body()))
        self.send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")  # the last chunk of the chunked body

    def events(self, job: Job):
        """Yield the job's lists of Tokens as the scheduler sends them; raise its APIError, or ClientGone (which
        cancels it) when the client closes the connection meanwhile."""
        checked = time.monotonic()
        while True:
            try:
                event = job.events.get(timeout=POLL_S)
            except queue.Empty:
                event = ()  # nothing yet: a moment to look at the client
            if time.monotonic() - checked >= POLL_S:  # every POLL_S, however fast the tokens come
                if self.client_gone():
                    raise ClientGone
                checked = time.monotonic()
            if event == ():
                continue
            if event is None:
                return
            if isinstance(event, APIError):
                raise event
            yield event

    def client_gone(self) -> bool:
        """Whether the client closed its end: the socket reads as end of file (peeked: nothing is consumed)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset by the peer
            return True

    # -- reading and writing -------------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        """The request body, as its Content-Length says, at most MAX_BODY_BYTES (413 above, left unread)."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise APIError(411, "send the body with a Content-Length header (chunked request bodies are not read)",
                           code="length_required")
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(411, "a POST needs a Content-Length header", code="length_required")
        if not (length.isascii() and length.isdigit()):
            raise APIError(400, f"Content-Length {length[:40]!r} is not a number of bytes")
        if int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"the body of {int(length)} bytes is more than the {MAX_BODY_BYTES} bytes a request "
                                f"may send", code="request_too_large")
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            raise APIError(408, f"the body did not arrive within {REQUEST_TIMEOUT_S:g} s", code="timeout") from None
        if len(body) < int(length):
            raise ClientGone  # the connection closed before the whole body came
        self.body_read = True
        return body

    def send_json(self, status: int, obj: dict) -> None:
        self.send_body(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def send_body(self, status: int, data: bytes, content_type: str) -> None:
        """A whole answer. After a refusal that left the request's body unread, the connection closes: the unread
        bytes would otherwise be read as the next request."""
        unread = self.command == "POST" and not getattr(self, "body_read", False)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status in (429, 503):
            self.send_header("Retry-After", "1")
        if unread or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_event(self, data: str) -> None:
        """One server-sent event as one HTTP chunk: its size in hex, CRLF, the bytes, CRLF."""
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, headers too long, an unknown method), in
        OpenAI's error shape like every other answer; the connection closes, as the library's would."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a request line the library could not read is taken for HTTP/0.9,
            self.request_version = "HTTP/1.0"  # whose answers have no status line: no client of this API reads that
        text = message or HTTPStatus(code).phrase
        self.send_json(code, APIError(code, f"{text}{': ' + explain if explain else ''}").body())


ROUTES = {"/": {"GET": Handler.get_page}, "/v1/models": {"GET": Handler.get_models},
          "/metrics": {"GET": Handler.get_metrics}, "/scheduler": {"GET": Handler.get_scheduler},
          "/v1/completions": {"POST": Handler.post_completions},
          "/v1/chat/completions": {"POST": Handler.post_chat}}
