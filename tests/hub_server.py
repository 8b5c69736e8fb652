"""A small stand-in for the Hugging Face hub on 127.0.0.1, for the download tests (see weights_tools/hub.py).

It answers the same URLs with the same kinds of answers as the real hub:
- `/{repo}/resolve/{revision}/{file}`: a file of at most `lfs_threshold` bytes comes back directly (200, with an
  ETag that is its git blob sha1, the sha1 of b"blob <size>\\0" + its bytes, as git-stored files do); a larger one
  is an LFS file: a 302 with a relative `Location: /cdn/{sha256}` and the `X-Linked-Size` / `X-Linked-Etag`
  headers that describe it.
- `/cdn/{sha256}`: the bytes, with an ETag that is not their sha256 (an md5, as S3-like stores send), so a client
  must take the sha256 from the redirect.
- Range requests (`Range: bytes=N-`) get 206 with Content-Range, or 416 past the end.
- Errors carry the hub's `X-Error-Code`: RepoNotFound (401 without a token, 404 with one, as the hub does so as not
  to reveal private repos), RevisionNotFound, EntryNotFound, GatedRepo (401 without the token, 403 with a wrong one).

Knobs for failures: `drop_once` (file names whose next body breaks off halfway, connection closed),
`corrupt` (file names served with one byte flipped while the headers still describe the true file),
`ignore_range` (answer a range request with the whole file and 200), `token` (require this Bearer token),
`renamed` (old repo id -> new one: a 307 to a relative URL, as for gpt2 -> openai-community/gpt2), `cdn_base`
(send LFS redirects to this absolute base, another host, instead of a relative /cdn/ path), `pace` (file name ->
bytes per second: its body is sent at that speed, for slow and concurrent downloads), `lies` (file name -> one
of LIES: the server lies about that file, every time it is asked), and `headers` (file name -> {header: value}:
these values replace or add to those of every answer about that file, to fuzz what a client parses).
Every request is logged in `requests` as (path, headers).
"""
from __future__ import annotations

import hashlib
import re
import socket
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RESOLVE = re.compile(r"/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<revision>[^/]+)/(?P<file>.+)")

# What `lies` can make the server do for a file. The hash and size lies are told where the client reads them: in
# the LFS redirect (X-Linked-Etag, X-Linked-Size) and the CDN's answer for a large file, in the ETag and
# Content-Length of the direct answer for a small one.
LIES = {
    "sha": "the announced hash (git blob sha1 or sha256) is that of other bytes",
    "no-etag": "no hash at all: no ETag, no X-Linked-Etag",
    "size+": "the announced size is 7 bytes more than the body, which ends (connection closed) after the true bytes",
    "size-": "the announced size is 7 bytes less than the body",
    "short-body": "the body stops halfway and the connection closes, on every try",
    "stall": "the status line and headers are sent, then nothing, until the server stops",
    "trickle": "the body comes at TRICKLE_BYTES_PER_S",
    "slow-headers": "the status line and headers come at TRICKLE_BYTES_PER_S, one byte at a time",
    "redirect-loop": "the resolve URL redirects to itself",
    "bad-location": "the resolve URL redirects to 'http://[::1', which is no URL",
    "bad-status": "the answer starts with a status line that is not HTTP ('HTTP/1.1 2OO OK')",
    "bad-length": "Content-Length (and X-Linked-Size) is '12abc'",
    "no-content": "the answer is 204 No Content",
}
TRICKLE_BYTES_PER_S = 20.0


class FakeHub:
    """The server and its content. Use as a context manager, or call stop()."""

    def __init__(self, *, lfs_threshold: int = 1024, tls: tuple[str, str] | None = None):
        """`tls`: (certificate file, key file) to serve HTTPS instead of HTTP."""
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> file name -> bytes
        self.revisions = {"main"}
        self.token: str | None = None
        self.drop_once: set[str] = set()
        self.corrupt: set[str] = set()
        self.ignore_range = False
        self.renamed: dict[str, str] = {}
        self.cdn_base = ""
        self.pace: dict[str, float] = {}
        self.lies: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stopped = threading.Event()  # slow and stalled answers end when it is set
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(repo, {})[filename] = data

    def requests_for(self, fragment: str) -> list[dict[str, str]]:
        """Headers of every request whose path contains `fragment`, in order."""
        return [headers for path, headers in self.requests if fragment in path]

    def blob(self, sha256: str) -> tuple[str, bytes] | None:
        for files in self.repos.values():
            for name, data in files.items():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return name, data
        return None

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def git_blob_sha1(data: bytes) -> str:
    """What `git hash-object` prints for a file holding `data`, and the hub's ETag for a git-stored file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def do_GET(self):
        self.hub.requests.append((self.path, dict(self.headers.items())))
        path = urllib.parse.unquote(self.path)
        if path.startswith("/cdn/"):
            found = self.hub.blob(path.removeprefix("/cdn/"))
            if found is None:
                return self._error(404, "EntryNotFound")
            name, data = found
            return self._send(name, data, etag=hashlib.md5(data).hexdigest())
        match = _RESOLVE.fullmatch(path)
        if match is None:
            return self._error(404, None)
        repo, revision, filename = match["repo"], match["revision"], match["file"]
        if repo in self.hub.renamed:
            return self._respond(307, [("Location", f"/{self.hub.renamed[repo]}/resolve/{revision}/{filename}")])
        authorization = self.headers.get("Authorization")
        if repo not in self.hub.repos:
            return self._error(404 if authorization else 401, "RepoNotFound")
        if self.hub.token is not None and authorization != f"Bearer {self.hub.token}":
            return self._error(403 if authorization else 401, "GatedRepo")
        if revision not in self.hub.revisions:
            return self._error(404, "RevisionNotFound")
        data = self.hub.repos[repo].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound")
        lie = self.hub.lies.get(filename)
        if lie == "redirect-loop":
            return self._respond(302, [("Location", self.path)])
        if lie == "bad-location":
            return self._respond(302, [("Location", "http://[::1")])
        if len(data) > self.hub.lfs_threshold:
            return self._redirect_to_cdn(filename, data, lie)
        etag = None if lie == "no-etag" else git_blob_sha1(data + b"lie" if lie == "sha" else data)
        return self._send(filename, data, etag=etag)

    def _redirect_to_cdn(self, filename: str, data: bytes, lie: str | None) -> None:
        """The hub's answer for an LFS file: where the bytes are, and what they must be."""
        sha256 = hashlib.sha256(data).hexdigest()
        headers = [("Location", f"{self.hub.cdn_base}/cdn/{sha256}"), ("X-Linked-Size", _announced_size(data, lie))]
        if lie != "no-etag":
            announced = hashlib.sha256(data + b"lie").hexdigest() if lie == "sha" else sha256
            headers.append(("X-Linked-Etag", f'"{announced}"'))
        self._respond(302, headers, name=filename)

    def _error(self, status: int, code: str | None) -> None:
        self._respond(status, [("X-Error-Code", code)] if code else [], f"error {status}".encode())

    def _send(self, name: str, data: bytes, *, etag: str | None) -> None:
        """Send `data` (or the part a Range asks for), applying the failure knobs and lies for file `name`."""
        lie = self.hub.lies.get(name)
        if name in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = [("ETag", f'"{etag}"')] if etag else []
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and not self.hub.ignore_range:
            start = int(wanted[1])
            if start >= len(data):
                return self._respond(416, [("Content-Range", f"bytes */{len(data)}")], name=name)
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
        else:
            status = 204 if lie == "no-content" else 200
        body = data[start:]
        if name in self.hub.drop_once or lie == "short-body":
            self.hub.drop_once.discard(name)
            return self._respond(status, headers, body, name=name, cut=len(body) // 2)
        pace = TRICKLE_BYTES_PER_S if lie == "trickle" else self.hub.pace.get(name)
        self._respond(status, headers, body, name=name, length=_announced_size(body, lie), lie=lie, pace=pace)

    def _respond(self, status: int, headers: list, body: bytes = b"", *, name: str | None = None,
                 length: str | None = None, cut: int | None = None, lie: str | None = None,
                 pace: float | None = None) -> None:
        """Write one whole answer about file `name` by hand, so that it can lie: `length` is the Content-Length
        announced (the body's own by default), `cut` stops the body there and closes the connection, `pace` sends
        it at that many bytes a second; `lie` tells the lies of LIES about the answer itself ("bad-status",
        "slow-headers", "stall"); the file's entry in `headers` replaces headers by name."""
        status_line = "HTTP/1.1 2OO OK" if lie == "bad-status" else f"HTTP/1.1 {status} {self.responses[status][0]}"
        fields = {"Content-Length": length or str(len(body)), "Connection": "close"}
        fields.update(headers)
        fields.update(self.hub.headers.get(name, {}))
        lines = [status_line, *(f"{key}: {value}" for key, value in fields.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.close_connection = True
        try:
            self._write(head, pace=TRICKLE_BYTES_PER_S if lie == "slow-headers" else None)
            if lie == "stall":
                self.hub.stopped.wait(60)
                return
            self._write(body[:cut], pace=pace)
            if cut is not None:
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
        except OSError:  # the client gave up and closed the connection: nothing more to say
            pass

    def _write(self, data: bytes, *, pace: float | None) -> None:
        """Send `data`, at `pace` bytes a second when given (in pieces of a twentieth of a second)."""
        if pace is None:
            self.wfile.write(data)
            self.wfile.flush()
            return
        piece = max(1, int(pace / 20))
        for at in range(0, len(data), piece):
            self.wfile.write(data[at:at + piece])
            self.wfile.flush()
            if self.hub.stopped.wait(piece / pace):
                return


def _announced_size(data: bytes, lie: str | None) -> str:
    """The size (Content-Length, X-Linked-Size) a server telling `lie` announces for `data`."""
    if lie == "bad-length":
        return "12abc"
    return str(len(data) + {"size+": 7, "size-": -7}.get(lie, 0))


def call_with_deadline(function, seconds: float):
    """function() run in a thread: its result, or the exception it raised. If it is still running after `seconds`,
    an AssertionError says so (the thread, a daemon, is left behind): a test's own limit, so a hang fails the test
    instead of holding the suite."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function()
        except BaseException as error:  # handed to the caller as it is
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{function} still running after {seconds} s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
