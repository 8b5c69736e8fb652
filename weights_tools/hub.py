"""Fetch a model from the Hugging Face hub into a local cache, with nothing but the standard library.

What this module adds: `resolve_model("gpt2")` turns a hub repo id into a local directory holding `config.json`,
the safetensors weights and the tokenizer files -- the Hugging Face layout that nanollm's loader reads. A source
that is already a local directory is returned unchanged.

The protocol, as you can watch it with `curl -I`
-------------------------------------------------
Every file of a repo at a revision (a branch, a tag or a commit hash) has one URL:

    {base}/{repo_id}/resolve/{revision}/{filename}     https://huggingface.co/gpt2/resolve/main/config.json

1. Small files kept in git itself (config.json, tokenizer.json) are answered directly: 200, the bytes, and an ETag
   that is the git blob's sha1 (40 hex digits). That is not a sha256 of the bytes, so for these files we check the
   size (Content-Length) only.
2. Large files kept in git-LFS (model.safetensors) are answered with a redirect (302 or 307) to a CDN. The redirect
   itself says what the bytes must be: `X-Linked-Size` (their count) and `X-Linked-Etag`, their sha256 (64 hex
   digits, in quotes). The CDN's own ETag means something else, so urllib must not follow the redirect for us:
   we follow it by hand and keep the hub's headers. When a redirect leaves the hub's host we drop the token, since
   the CDN URL is pre-signed and has no business seeing it; we only ever follow http(s) URLs.
3. A renamed repo (gpt2 is now openai-community/gpt2) is a redirect too, to a relative URL on the same host.
4. Errors: 404 means no such file; the hub's `X-Error-Code` header says RepoNotFound, RevisionNotFound or
   EntryNotFound. 401/403 mean a gated or private repo; without a token the hub also answers 401 for a repo that
   does not exist, so as not to reveal private names. A token travels as `Authorization: Bearer hf_...`.
5. Resume (RFC 9110, section 14): `Range: bytes=N-` asks for the file from byte N on. The answer 206 Partial
   Content sends the rest with `Content-Range: bytes N-(size-1)/size`; a plain 200 means the server ignored the
   range and sends the whole file, so we start the file over.

Which files: config.json (required); generation_config.json (if present); the weights, either
model.safetensors.index.json plus every shard named in its `weight_map` (large models are split), or
model.safetensors; then whichever tokenizer files the repo has. nanollm reads safetensors only, never pickles.

The cache
---------
    <cache>/<repo_id, "/" written "--">/<revision, "/" written "--">/
        config.json  model.safetensors  tokenizer.json ...   final names: only complete, verified files
        model.safetensors.part                              an interrupted download, resumed by the next run
        .nanollm-complete.json                              written last: the files of a complete snapshot

`<cache>` is `cache_dir`, else $NANOLLM_CACHE, else ~/.cache/nanollm. Each file is written to `<name>.part`,
checked (its size; its sha256 when the hub gives one) and only then renamed to its final name with `os.replace`,
which is atomic on one filesystem: a reader sees no file or the whole verified file, never half of one. A `.part`
that fails verification is deleted at once. A `.part` is kept only after a network failure, for the next run to
resume (one run also retries by itself, as long as each attempt brings new bytes). The snapshot marker is written
after every file is in place, and only a directory with the marker is ever returned, so a half-fetched model never
reaches the loader.

A snapshot with its marker is used without asking the network. So a branch like `main` that has moved on the hub is
not fetched again: pin a commit hash as `revision`, or delete the folder, to refresh it.

Environment: $NANOLLM_HUB_URL (default https://huggingface.co; the tests point it at a local server), $HF_TOKEN,
$NANOLLM_OFFLINE=1 or $HF_HUB_OFFLINE=1 (use the cache only, never the network). Every request has a timeout
(TIMEOUT_SECONDS, per connect and per read, so a slow but live download is not cut off).

Progress: with `progress=True`, a bar on stderr for each file over 1 MB when stderr is a terminal, and, whenever
something was downloaded, one summary line on stderr at the end (also when stderr is a log file).

Sources: huggingface_hub's `hf_hub_download` documentation and its `file_download.py`/`utils/_http.py` for the
headers and error codes above; RFC 9110 for redirects and range requests.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .safetensors import INDEX_FILE_NAME as WEIGHTS_INDEX
from .safetensors import SINGLE_FILE_NAME as WEIGHTS_FILE

DEFAULT_HUB_URL = "https://huggingface.co"
TIMEOUT_SECONDS = 30.0  # per socket operation: the connect, then each read
MAX_REDIRECTS = 5
MAX_ATTEMPTS = 5  # tries per file, retried only while each attempt brings new bytes
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 1 << 20  # files smaller than this get no bar
USER_AGENT = "nanollm (python-urllib)"

CONFIG_FILE = "config.json"
OPTIONAL_FILES = ("generation_config.json",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
SNAPSHOT_MARKER = ".nanollm-complete.json"

_REDIRECTS = (301, 302, 303, 307, 308)
# The hub's own rule for names: letters, digits, "-", "_", "."; at most one "/"; no "--" or "..".
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = ("1", "true", "yes", "on")


class HubError(RuntimeError):
    """A model could not be fetched, or found in the cache. The message is one line meant for the user."""


class _HttpStatus(Exception):
    """Internal: the hub answered with an error status; the caller decides what it means for this file."""

    def __init__(self, status: int, error_code: str | None, url: str):
        super().__init__(f"HTTP {status} at {url}")
        self.status, self.error_code, self.url = status, error_code, url


@dataclass(frozen=True)
class _Remote:
    """One repo at one revision on one hub, and the token to show it (None: anonymous)."""

    repo_id: str  # "openai-community/gpt2"
    revision: str  # "main", a tag, or a 40-hex commit hash
    base_url: str  # "https://huggingface.co"
    token: str | None

    def url(self, filename: str) -> str:
        revision = urllib.parse.quote(self.revision, safe="")  # "refs/pr/1" travels as refs%2Fpr%2F1
        return f"{self.base_url}/{self.repo_id}/resolve/{revision}/{urllib.parse.quote(filename)}"


@dataclass(frozen=True)
class _Expected:
    """What the hub says a file is; None where it does not say."""

    size: int | None
    sha256: str | None  # lowercase hex


# ----------------------------------------------------------------------------------------------------------------
# The entry point


def resolve_model(
    source: str,
    *,
    revision: str = "main",
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    token: str | None = None,
    progress: bool = True,
) -> Path:
    """A local directory holding the model `source`: the directory itself, or the cached snapshot of a hub repo.

    `source` is a directory ("./my-model") or a hub repo id ("gpt2", "openai-community/gpt2"). Raises HubError with
    one line of explanation when the model is neither cached nor fetchable.
    """
    if source and Path(source).is_dir():  # "" would be Path("."), the current directory
        return Path(source)
    repo_id = source
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise HubError(f"{source!r} is neither a local directory nor a hub repo id like 'gpt2' or 'org/name'")
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise HubError(f"{revision!r} is not a revision (a branch, a tag or a commit hash)")

    root = _cache_root(cache_dir)
    snapshot = root / repo_id.replace("/", "--") / revision.replace("/", "--")
    if _is_complete(snapshot):
        return snapshot
    reason = _offline_reason(offline)
    if reason:
        raise HubError(
            f"model {repo_id} (revision {revision}) is not in the cache at {snapshot} and {reason}: "
            f"run once with network access to fetch it"
        )
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    base_url = (os.environ.get("NANOLLM_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")
    try:
        return _fetch_snapshot(_Remote(repo_id, revision, base_url, token), snapshot, progress=progress)
    except HubError:
        # A failed first attempt should not leave empty folders behind (a kept .part or verified file stays).
        for folder in (snapshot, snapshot.parent):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("NANOLLM_CACHE"):
        return Path(os.environ["NANOLLM_CACHE"]).expanduser()
    return Path.home() / ".cache" / "nanollm"


def _offline_reason(offline: bool | None) -> str | None:
    """Why the network is off limits ("offline=True", "NANOLLM_OFFLINE=1"), or None when it may be used."""
    if offline is not None:
        return "offline=True was given" if offline else None
    for name in ("NANOLLM_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]} forbids the network"
    return None


def _is_complete(snapshot: Path) -> bool:
    """True when the snapshot's marker exists and every file it lists is in place."""
    try:
        files = json.loads((snapshot / SNAPSHOT_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((snapshot / name).is_file() for name in files)


# ----------------------------------------------------------------------------------------------------------------
# Which files make a model


def _fetch_snapshot(remote: _Remote, snapshot: Path, *, progress: bool) -> Path:
    """Fetch every file of the model into `snapshot` (skipping those already there), then write the marker."""
    snapshot.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    present: list[str] = []
    downloaded = 0

    def fetch(filename: str, *, required: bool = False) -> bool:
        """Fetch one file; False when it is optional and the hub has no such file (404)."""
        nonlocal downloaded
        try:
            downloaded += _fetch_file(remote, filename, snapshot, progress=progress)
        except _HttpStatus as answer:
            if answer.status == 404 and not required:
                return False
            raise _explain(remote, answer) from None
        present.append(filename)
        return True

    fetch(CONFIG_FILE, required=True)  # every model has one: its absence means there is no such model
    for filename in OPTIONAL_FILES:
        fetch(filename)
    if fetch(WEIGHTS_INDEX):
        for shard in _shard_names(snapshot / WEIGHTS_INDEX, remote):
            if not fetch(shard):
                raise HubError(f"model {remote.repo_id}: its {WEIGHTS_INDEX} names {shard}, which the hub lacks")
    elif not fetch(WEIGHTS_FILE):
        raise HubError(
            f"model {remote.repo_id} (revision {remote.revision}) has no {WEIGHTS_FILE} or {WEIGHTS_INDEX}; "
            f"nanollm reads safetensors weights only"
        )
    for filename in TOKENIZER_FILES:
        fetch(filename)

    _write_atomically(
        snapshot / SNAPSHOT_MARKER,
        json.dumps({"repo_id": remote.repo_id, "revision": remote.revision, "files": present}, indent=1).encode(),
    )
    if progress and downloaded:
        seconds = time.monotonic() - started
        print(
            f"nanollm: fetched {remote.repo_id}@{remote.revision}: {_human(downloaded)} in {seconds:.1f} s "
            f"into {snapshot}",
            file=sys.stderr,
        )
    return snapshot


def _shard_names(index_path: Path, remote: _Remote) -> list[str]:
    """The shard files an index names, e.g. ["model-00001-of-00002.safetensors", ...], each checked to be a plain
    file name: they come from the network and become paths, so "../../.bashrc" must not get through."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise HubError(f"model {remote.repo_id}: {WEIGHTS_INDEX} has no readable weight_map ({error})") from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise HubError(f"model {remote.repo_id}: {WEIGHTS_INDEX} names a shard {name!r} that is not a file name")
    return names


def _explain(remote: _Remote, answer: _HttpStatus) -> HubError:
    """Turn an error status into the one line the user needs."""
    if answer.status in (401, 403):
        if answer.error_code == "RepoNotFound":
            return HubError(
                f"no model named {remote.repo_id} on the hub (HTTP {answer.status} at {answer.url}); "
                f"if it is private, set HF_TOKEN to an access token that can read it"
            )
        if remote.token:
            return HubError(
                f"model {remote.repo_id} is gated or private and the token sent has no access to it "
                f"(HTTP {answer.status} at {answer.url}); check HF_TOKEN, and accept the model's terms on the hub"
            )
        return HubError(
            f"model {remote.repo_id} is gated or private (HTTP {answer.status} at {answer.url}): accept its terms "
            f"on the hub, then set HF_TOKEN to an access token"
        )
    if answer.error_code == "RevisionNotFound":
        return HubError(f"model {remote.repo_id} has no revision {remote.revision!r} (at {answer.url})")
    if answer.status == 404:  # only config.json is required, so this is the repo itself missing
        return HubError(f"no model named {remote.repo_id} on the hub ({answer.url} does not exist)")
    return HubError(f"the hub answered HTTP {answer.status} for model {remote.repo_id} at {answer.url}")


# ----------------------------------------------------------------------------------------------------------------
# One file: download to .part, resume, verify, rename


def _fetch_file(remote: _Remote, filename: str, snapshot: Path, *, progress: bool) -> int:
    """Put `filename` into `snapshot`, complete and verified. -> bytes downloaded (0 when it was already there).

    Raises _HttpStatus for an error status (404: no such file) and HubError for network or verification failures.
    """
    final = snapshot / filename
    if final.is_file():  # only verified files ever get a final name
        return 0
    part = final.with_name(final.name + ".part")
    downloaded = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        start = part.stat().st_size if part.exists() else 0
        try:
            response, url, expected = _open(remote, filename, start=start)
        except _HttpStatus as answer:
            if answer.status == 416 and start > 0:  # our .part is already as long as the file (or longer): redo
                part.unlink()
                continue
            raise
        with response:
            if response.status == 206:
                offset = _content_range_start(response.headers.get("Content-Range"))
                if offset != start:  # not the bytes we asked for: start over rather than guess
                    part.unlink(missing_ok=True)
                    continue
            else:  # 200: the whole file, whether or not we asked for a range
                start = 0
            bar = _ProgressBar(filename, expected.size, enabled=progress)
            received, failure = _stream(response, part, append=start > 0, bar=bar, already=start)
            bar.close()
        downloaded += received
        size = part.stat().st_size
        if failure is None and expected.size is not None and size < expected.size:
            failure = f"the connection closed at byte {size} of {expected.size}"
        if failure is not None:
            if received > 0 and attempt < MAX_ATTEMPTS:
                continue  # that attempt made progress: resume from where it stopped
            raise HubError(
                f"download of {filename} for model {remote.repo_id} broke off ({failure}) at {url}; "
                f"run again to resume from byte {size}"
            )
        _verify(part, expected, filename=filename, remote=remote, url=url)
        os.replace(part, final)
        return downloaded
    raise HubError(f"gave up on {filename} for model {remote.repo_id} after {MAX_ATTEMPTS} attempts")


def _open(remote: _Remote, filename: str, *, start: int) -> tuple[http.client.HTTPResponse, str, _Expected]:
    """GET `filename` from byte `start` on, following redirects by hand.

    -> (the open response with status 200 or 206, its URL, what the hub says the file is). Raises _HttpStatus for
    an error status and HubError when the hub cannot be reached.
    """
    url = remote.url(filename)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if remote.token:
        headers["Authorization"] = f"Bearer {remote.token}"
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    linked = None  # the X-Linked-* headers of the hub's redirect, when it sends them
    opener = urllib.request.build_opener(_NoRedirects())  # per call: it reads the proxy settings of this moment
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as answer:
            with answer:
                if answer.code not in _REDIRECTS or not answer.headers.get("Location"):
                    raise _HttpStatus(answer.code, answer.headers.get("X-Error-Code"), url) from None
                linked = linked or _linked_expectation(answer.headers)
                target = urllib.parse.urljoin(url, answer.headers["Location"])  # the hub may send a relative one
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise HubError(f"model {remote.repo_id}: the hub redirected {url} to a non-HTTP URL {target}")
            if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                headers.pop("Authorization", None)
            url = target
            continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise HubError(
                f"cannot reach the hub for model {remote.repo_id}: {reason} ({url}); check the network, or set "
                f"NANOLLM_OFFLINE=1 to use only the cache"
            ) from None
        return response, url, linked or _direct_expectation(response)
    raise HubError(f"model {remote.repo_id}: more than {MAX_REDIRECTS} redirects for {remote.url(filename)}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Make urllib hand every redirect back to us as an HTTPError, so `_open` can read its headers first."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _linked_expectation(headers) -> _Expected | None:
    """Size and sha256 of an LFS file, from the hub's redirect; None when the redirect does not carry them."""
    size, etag = headers.get("X-Linked-Size"), headers.get("X-Linked-Etag")
    if size is None and etag is None:
        return None  # e.g. a renamed repo: the next hop will tell
    return _Expected(int(size) if size and size.isdigit() else None, _sha256_from_etag(etag))


def _direct_expectation(response: http.client.HTTPResponse) -> _Expected:
    """Size and sha256 from a response that carries the bytes itself."""
    if response.status == 206:  # Content-Range: bytes 100-999/1000 -> the whole file is 1000 bytes
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else None
    else:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
    return _Expected(size, _sha256_from_etag(response.headers.get("ETag")))


def _sha256_from_etag(etag: str | None) -> str | None:
    """'"9e55...d347"' -> '9e55...d347' when the tag is a sha256; a git sha1 or a CDN's tag -> None."""
    if not etag:
        return None
    tag = etag.strip().removeprefix("W/").strip('"').lower()
    return tag if _SHA256.fullmatch(tag) else None


def _content_range_start(value: str | None) -> int | None:
    """'bytes 100-999/1000' -> 100."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def _stream(response, part: Path, *, append: bool, bar: _ProgressBar, already: int) -> tuple[int, str | None]:
    """Copy the response body into `part`. -> (bytes received, None or what interrupted the transfer).

    A dropped connection is not an exception here: the bytes received so far stay in `part` for the resume.
    """
    received = 0
    try:
        with open(part, "ab" if append else "wb") as sink:
            while chunk := response.read(CHUNK_BYTES):
                sink.write(chunk)
                received += len(chunk)
                bar.update(already + received)
    except (OSError, http.client.HTTPException) as error:  # reset, timeout, truncated chunk
        return received, str(error) or type(error).__name__
    return received, None


def _verify(part: Path, expected: _Expected, *, filename: str, remote: _Remote, url: str) -> None:
    """Check size and sha256; on a mismatch delete the part file and raise, so no bad bytes stay in the cache."""
    size = part.stat().st_size
    problem = None
    if expected.size is not None and size != expected.size:
        problem = f"it has {size} bytes where the hub announced {expected.size}"
    elif expected.sha256 is not None:
        digest = _sha256_of(part)
        if digest != expected.sha256:
            problem = f"its sha256 is {digest} where the hub announced {expected.sha256}"
    if problem is not None:
        part.unlink()
        raise HubError(f"download of {filename} for model {remote.repo_id} is corrupt: {problem} ({url}); deleted it")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


# ----------------------------------------------------------------------------------------------------------------
# Progress on stderr


class _ProgressBar:
    """`model.safetensors  42% [############                  ] 230.1 MB / 548.1 MB  31.0 MB/s`, redrawn in place.

    Drawn only for files over PROGRESS_MIN_BYTES when stderr is a terminal; a log file gets the summary line only.
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool):
        self.label, self.total = label, total
        self.enabled = enabled and total is not None and total > PROGRESS_MIN_BYTES and sys.stderr.isatty()
        self.started = self.last_drawn = time.monotonic()
        self.first = None  # bytes on disk at the first update: a resume does not count towards the speed

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = done
        if now - self.last_drawn < 0.1 and done < self.total:
            return
        self.last_drawn = now
        width = 30
        filled = width * done // self.total
        speed = (done - self.first) / max(now - self.started, 1e-6)
        sys.stderr.write(
            f"\r{self.label}  {100 * done // self.total:3d}% [{'#' * filled}{' ' * (width - filled)}] "
            f"{_human(done)} / {_human(self.total)}  {_human(speed)}/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.first is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _human(count: float) -> str:
    """999 -> '999 B', 8000 -> '8.0 kB', 548_105_171 -> '548.1 MB'."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000 or unit == "GB":
            break
    return f"{count:.1f} {unit}"
