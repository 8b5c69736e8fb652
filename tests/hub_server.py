"""A small stand-in for the Hugging Face hub on 127.0.0.1, for the download tests (see weights_tools/hub.py).

It answers the same URLs with the same kinds of answers as the real hub:
- `/{repo}/resolve/{revision}/{file}`: a file of at most `lfs_threshold` bytes comes back directly (200, with an
  ETag that is its git blob sha1, as git-stored files do); a larger one is an LFS file: a 302 with a relative
  `Location: /cdn/{sha256}` and the `X-Linked-Size` / `X-Linked-Etag` headers that describe it.
- `/cdn/{sha256}`: the bytes, with an ETag that is not their sha256 (an md5, as S3-like stores send), so a client
  must take the sha256 from the redirect.
- Range requests (`Range: bytes=N-`) get 206 with Content-Range, or 416 past the end.
- Errors carry the hub's `X-Error-Code`: RepoNotFound (401 without a token, 404 with one, as the hub does so as not
  to reveal private repos), RevisionNotFound, EntryNotFound, GatedRepo (401 without the token, 403 with a wrong one).

Knobs for failures: `drop_once` (file names whose next body breaks off halfway, connection closed),
`corrupt` (file names served with one byte flipped while the headers still describe the true file),
`ignore_range` (answer a range request with the whole file and 200), `token` (require this Bearer token),
`renamed` (old repo id -> new one: a 307 to a relative URL, as for gpt2 -> openai-community/gpt2), `cdn_base`
(send LFS redirects to this absolute base, another host, instead of a relative /cdn/ path).
Every request is logged in `requests` as (path, headers).
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RESOLVE = re.compile(r"/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<revision>[^/]+)/(?P<file>.+)")


class FakeHub:
    """The server and its content. Use as a context manager, or call stop()."""

    def __init__(self, *, lfs_threshold: int = 1024):
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> file name -> bytes
        self.revisions = {"main"}
        self.token: str | None = None
        self.drop_once: set[str] = set()
        self.corrupt: set[str] = set()
        self.ignore_range = False
        self.renamed: dict[str, str] = {}
        self.cdn_base = ""
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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
            self.send_response(307)
            self.send_header("Location", f"/{self.hub.renamed[repo]}/resolve/{revision}/{filename}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
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
        if len(data) > self.hub.lfs_threshold:
            sha256 = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_base}/cdn/{sha256}")
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return self._send(filename, data, etag=git_sha1)

    def _error(self, status: int, code: str | None) -> None:
        body = f"error {status}".encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, name: str, data: bytes, *, etag: str) -> None:
        """Send `data` (or the part a Range asks for), applying the failure knobs for file `name`."""
        if name in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and not self.hub.ignore_range:
            start = int(wanted[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if name in self.hub.drop_once:
            self.hub.drop_once.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            self.close_connection = True
            return
        self.wfile.write(body)
