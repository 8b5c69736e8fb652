"""Fetch a model from the Hugging Face hub into a local cache, with nothing but the standard library.

What this module adds: `resolve_model("gpt2")` turns a hub repo id into a local directory holding `config.json`,
the safetensors weights and the tokenizer files -- the Hugging Face layout that nanollm's loader reads. A source
that is already a local directory is returned unchanged.

The protocol, as you can watch it with `curl -I`
-------------------------------------------------
Every file of a repo at a revision (a branch, a tag or a commit hash) has one URL:

    {base}/{repo_id}/resolve/{revision}/{filename}     https://huggingface.co/gpt2/resolve/main/config.json

1. Small files kept in git itself (config.json, tokenizer.json) are answered directly: 200, the bytes, and an ETag
   that is the git blob's sha1 (40 hex digits, in quotes, sometimes written weak as W/"..."): the sha1 of
   b"blob <size>\\0" followed by the bytes, what `git hash-object` prints.
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
model.safetensors; failing both, the same for PyTorch's pytorch_model.bin.index.json or pytorch_model.bin (many
older checkpoints ship only these; weights_tools/torch_checkpoint.py reads them without running their pickle), so
a repo holding both formats costs the safetensors download only; then whichever tokenizer files the repo has, which
are the files nanollm/tokenizer/loading.py reads (chat_template.jinja among them: transformers 5 saves a chat
template only there).

Verification: every file is checked before it gets its final name
-------------------------------------------------------------------
A file's bytes must have the size the hub announced (X-Linked-Size, else Content-Length, or the total of a 206's
Content-Range) and the hash it announced: the sha256 for an LFS file, the git blob sha1 for a git-stored one (as
huggingface_hub's `utils.sha.git_hash` computes it). A file the hub does not describe with both is refused before
a byte is stored, as huggingface_hub refuses a file without an ETag ("we won't be able to reliably ensure
reproducibility"). No more than the announced size is ever read, and a file larger than the free space of the
cache is refused up front. A wrong size or hash deletes the download and raises a HubError naming the file and the
mismatch; nothing stays behind.

Names from the network: the shard names in an index become paths, so each must be a plain file name of the index's
format, `*.safetensors` or `*.bin` (letters, digits, ".", "_", "-", not starting with "."). That refuses
"../../.bashrc" and also every name of the cache's own bookkeeping (the marker, `.part` and `.lock` files, temporary
files), which no remote file may overwrite.

Time limits: nothing waits forever
----------------------------------
- Each socket operation (the connect, each read) may wait TIMEOUT_SECONDS (30 s): a server that stops sending
  fails that long after its last byte.
- The rate rule: in every window of TIMEOUT_SECONDS, the body of the file must grow by at least MIN_BYTES_PER_S
  (10 kB/s) on average, counted from the first request of an attempt, so the headers and redirects count too. A
  server that trickles (one byte a second, each read within the timeout) is cut at the end of the first window.
  This makes a deadline per attempt: a file of N bytes is complete within N / MIN_BYTES_PER_S + TIMEOUT_SECONDS
  seconds or the attempt ends. A small thread watches the count and, when a window falls short, shuts the socket,
  which wakes the blocked read at once, wherever it is (reading headers or the body).
- A file gets at most MAX_ATTEMPTS (5) attempts, a new one only when the last brought new bytes (it resumes them),
  so a file of N bytes is done or given up within 5 x (N / MIN_BYTES_PER_S + TIMEOUT_SECONDS) seconds.
The tests shrink both limits through the environment: $NANOLLM_HUB_TIMEOUT (seconds) and $NANOLLM_HUB_MIN_RATE
(bytes per second) replace TIMEOUT_SECONDS and MIN_BYTES_PER_S.

The cache
---------
    <cache>/<repo_id, "/" written "--">/<revision, "/" written "--">/
        config.json  model.safetensors  tokenizer.json ...   final names: only complete, verified files
        model.safetensors.part                              an interrupted download, resumed by the next run
        .nanollm-complete.json                              written last: the files of a complete snapshot
    <cache>/.locks/<the same two folders>/config.json.lock  one lock file per cached file

`<cache>` is `cache_dir`, else $NANOLLM_CACHE, else ~/.cache/nanollm. Each file is written to `<name>.part`,
flushed to disk, verified, and only then renamed to its final name with `os.replace`, which is atomic on one
filesystem: a reader sees no file or the whole verified file, never half of one. A `.part` that fails verification
is deleted at once. A `.part` is kept only after a network failure, for the next run to resume (one run also
retries by itself, as long as each attempt brings new bytes). The snapshot marker is written (atomically, through
nanollm.files) after every file is in place, and only a directory with the marker is ever returned, so a
half-fetched model never reaches the loader. Every cache file is read through nanollm.files, so a FIFO or a device
where a file should be is an error at once, not a hang; a `.part` that is not a regular file is removed.

Several processes may share one cache. Whoever fetches a file first holds an exclusive `fcntl.flock` on its lock
file while it downloads or resumes the `.part`; another process that wants the same file waits for the lock (saying
so on stderr), then finds the final, verified file and skips it. The kernel releases a lock when its holder exits,
even when killed, so a crash leaves a `.part` for the next holder to resume, never a stuck lock. Lock files stay
in place: deleting one while another process waits on it would let a third process lock a new file of the same
name, and two downloads would share one `.part`.

A snapshot with its marker is used without asking the network. So a branch like `main` that has moved on the hub is
not fetched again: pin a commit hash as `revision`, or delete the folder, to refresh it.

Environment: $NANOLLM_HUB_URL (default https://huggingface.co; the tests point it at a local server), $HF_TOKEN,
$NANOLLM_OFFLINE=1 or $HF_HUB_OFFLINE=1 (use the cache only, never the network), $NANOLLM_HUB_TIMEOUT and
$NANOLLM_HUB_MIN_RATE (the time limits above).

Progress: with `progress=True`, a bar on stderr for each file over 1 MB when stderr is a terminal, and, whenever
something was downloaded, one summary line on stderr at the end (also when stderr is a log file).

Sources: huggingface_hub's `hf_hub_download` documentation and its `file_download.py`/`utils/_http.py` for the
headers and error codes above, `utils/sha.py` for the git blob sha1; RFC 9110 for redirects and range requests;
flock(2) for the locks.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nanollm import files

# the modules, not their names: see weights_tools/__init__.py
from . import safetensors, torch_checkpoint

DEFAULT_HUB_URL = "https://huggingface.co"
TIMEOUT_SECONDS = 30.0  # per socket operation (the connect, then each read), and the window of the rate rule
MIN_BYTES_PER_S = 10_000  # the slowest transfer accepted, averaged over each window of TIMEOUT_SECONDS
MAX_REDIRECTS = 5
MAX_ATTEMPTS = 5  # tries per file, retried only while each attempt brings new bytes
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 1 << 20  # files smaller than this get no bar
USER_AGENT = "nanollm (python-urllib)"

CONFIG_FILE = "config.json"
OPTIONAL_FILES = ("generation_config.json",)
# What nanollm/tokenizer/loading.py reads, in the names the hub uses (tests/test_hub.py checks the two agree).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
SNAPSHOT_MARKER = ".nanollm-complete.json"
LOCKS_FOLDER = ".locks"  # under the cache root; no repo id can be named so (a repo id starts with a letter or digit)

_REDIRECTS = (301, 302, 303, 307, 308)
# The hub's own rule for names: letters, digits, "-", "_", "."; at most one "/"; no "--" or "..".
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_SHARD_NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"  # then the suffix: model-00001-of-00002.safetensors
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_COUNT = re.compile(r"[0-9]{1,18}")  # a byte count in a header: ASCII digits only ("²".isdigit() is True)
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
class _Limits:
    """The time limits of the module docstring, with the environment's overrides applied."""

    timeout: float  # seconds: per socket operation, and the window of the rate rule (30.0)
    min_rate: float  # bytes per second, averaged over each window (10_000)

    @classmethod
    def from_environment(cls) -> _Limits:
        return cls(_positive_setting("NANOLLM_HUB_TIMEOUT", TIMEOUT_SECONDS, "seconds"),
                   _positive_setting("NANOLLM_HUB_MIN_RATE", MIN_BYTES_PER_S, "bytes per second"))


@dataclass(frozen=True)
class _Expected:
    """What the hub says a file is; None where it does not say."""

    size: int | None
    digest: tuple[str, str] | None  # ("sha256", hex) for an LFS file, ("git-sha1", hex) for a git-stored one


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
    folder = Path(repo_id.replace("/", "--"), revision.replace("/", "--"))
    snapshot = root / folder
    if _is_complete(snapshot):
        return snapshot
    reason = _offline_reason(offline)
    if reason:
        raise HubError(
            f"model {repo_id} (revision {revision}) is not in the cache at {snapshot} and {reason}: "
            f"run once with network access to fetch it"
        )
    limits = _Limits.from_environment()
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    base_url = (os.environ.get("NANOLLM_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")
    remote = _Remote(repo_id, revision, base_url, token)
    try:
        return _fetch_snapshot(remote, snapshot, root / LOCKS_FOLDER / folder, limits=limits, progress=progress)
    except (HubError, OSError) as error:
        # A failed first attempt should not leave empty folders behind (a kept .part or verified file stays).
        for empty in (snapshot, snapshot.parent):
            _remove_if_empty(empty)
        if isinstance(error, HubError):
            raise
        # The network's errors are HubErrors already: an OSError here is the cache itself (full, read-only, ...).
        raise HubError(f"cannot write model {repo_id} into the cache at {snapshot}: {error}") from None


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


def _positive_setting(name: str, default: float, unit: str) -> float:
    """The number in environment variable `name` ("0.5"), else `default`; anything but a positive number is refused."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise HubError(f"{name}={text!r} is not a positive number of {unit}")
    return value


def _is_complete(snapshot: Path) -> bool:
    """True when the snapshot's marker exists and every file it lists is in place (a regular file)."""
    try:
        names = json.loads(files.read_text(snapshot / SNAPSHOT_MARKER))["files"]
        return all((snapshot / name).is_file() for name in names)
    except (OSError, ValueError, KeyError, TypeError):  # FileError (a FIFO, not UTF-8) is an OSError
        return False


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (another process may be filling it), or already gone
        pass


# ----------------------------------------------------------------------------------------------------------------
# Which files make a model


def _fetch_snapshot(remote: _Remote, snapshot: Path, locks: Path, *, limits: _Limits, progress: bool) -> Path:
    """Fetch every file of the model into `snapshot` (skipping those already there), then write the marker."""
    snapshot.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    present: list[str] = []
    downloaded = 0

    def fetch(filename: str, *, required: bool = False) -> bool:
        """Fetch one file; False when it is optional and the hub has no such file (404)."""
        nonlocal downloaded
        try:
            downloaded += _fetch_file(remote, filename, snapshot, locks, limits=limits, progress=progress)
        except _HttpStatus as answer:
            if answer.status == 404 and not required:
                return False
            raise _explain(remote, filename, answer) from None
        present.append(filename)
        return True

    fetch(CONFIG_FILE, required=True)  # every model has one: its absence means there is no such model
    for filename in OPTIONAL_FILES:
        fetch(filename)
    # Each format's (index, single file, shards' suffix), in the order they are tried. Built here, not at import:
    # a sibling module may be half-imported then (see weights_tools/__init__.py).
    formats = ((safetensors.INDEX_FILE_NAME, safetensors.SINGLE_FILE_NAME, ".safetensors"),
               (torch_checkpoint.INDEX_FILE_NAME, torch_checkpoint.SINGLE_FILE_NAME, ".bin"))
    for index, single, suffix in formats:
        if fetch(index):
            for shard in _shard_names(snapshot / index, suffix, remote):
                if not fetch(shard):
                    raise HubError(f"model {remote.repo_id}: its {index} names {shard}, which the hub lacks")
            break
        if fetch(single):
            break
    else:
        names = ", ".join(name for index, single, _ in formats for name in (single, index))
        raise HubError(f"model {remote.repo_id} (revision {remote.revision}) has no weights nanollm reads: none of "
                       f"{names}")
    for filename in TOKENIZER_FILES:
        fetch(filename)

    marker = {"repo_id": remote.repo_id, "revision": remote.revision, "files": present}
    files.write_text(snapshot / SNAPSHOT_MARKER, json.dumps(marker, indent=1))
    if progress and downloaded:
        seconds = time.monotonic() - started
        print(
            f"nanollm: fetched {remote.repo_id}@{remote.revision}: {_human(downloaded)} in {seconds:.1f} s "
            f"into {snapshot}",
            file=sys.stderr,
        )
    return snapshot


def _shard_names(index_path: Path, suffix: str, remote: _Remote) -> list[str]:
    """The shard files an index names, e.g. ["model-00001-of-00002.safetensors", ...], each a plain file name ending
    in the format's `suffix`: they come from the network and become paths, so neither "../../.bashrc" nor the name
    of one of the cache's own files (".nanollm-complete.json", "x.part", "x.lock") may get through."""
    try:
        weight_map = json.loads(files.read_text(index_path))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise HubError(f"model {remote.repo_id}: {index_path.name} has no readable weight_map ({error})") from None
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(_SHARD_NAME + re.escape(suffix), name):
            raise HubError(
                f"model {remote.repo_id}: {index_path.name} names a shard {name!r}, which is not a plain *{suffix} "
                f"file name (letters, digits, '.', '_', '-', not starting with '.'); refusing it"
            )
    return names


def _explain(remote: _Remote, filename: str, answer: _HttpStatus) -> HubError:
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
    return HubError(f"the hub answered HTTP {answer.status} for {filename} of model {remote.repo_id} at {answer.url}")


# ----------------------------------------------------------------------------------------------------------------
# One file: lock, download to .part, resume, verify, rename


def _fetch_file(remote: _Remote, filename: str, snapshot: Path, locks: Path, *, limits: _Limits,
                progress: bool) -> int:
    """Put `filename` into `snapshot`, complete and verified. -> bytes downloaded (0 when it was already there).

    Raises _HttpStatus for an error status (404: no such file) and HubError for network or verification failures.
    """
    final = snapshot / filename
    with _locked(locks / f"{filename}.lock", filename=filename, progress=progress):
        if final.is_file():  # only verified files ever get a final name; perhaps another process's, while we waited
            return 0
        return _download(remote, filename, final, limits=limits, progress=progress)


@contextmanager
def _locked(lock_file: Path, *, filename: str, progress: bool):
    """Hold an exclusive flock on `lock_file` for the block; wait (saying so) while another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"nanollm: waiting for another process that is downloading {filename} (lock {lock_file})",
                      file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _download(remote: _Remote, filename: str, final: Path, *, limits: _Limits, progress: bool) -> int:
    """Download `filename` to `<final>.part`, resuming what is there, verify it, and rename it to `final`.
    -> bytes downloaded. The caller holds the file's lock."""
    part = final.with_name(final.name + ".part")
    downloaded, failure, url = 0, None, remote.url(filename)
    for _ in range(MAX_ATTEMPTS):
        start = _part_size(part)
        with _RateWatch(limits) as watch:
            try:
                response, url, expected = _open(remote, filename, start=start, watch=watch)
            except _HttpStatus as answer:
                if answer.status == 416 and start > 0:  # our .part is already as long as the file (or longer): redo
                    part.unlink()
                    failure = f"the hub refused to resume from byte {start} (HTTP 416)"
                    continue
                raise
            with response:
                _check_described(expected, start=start, filename=filename, remote=remote, url=url, folder=final.parent)
                if response.status == 206:
                    offset = _content_range_start(response.headers.get("Content-Range"))
                    if offset != start or start >= expected.size:  # not the bytes we asked for: start over
                        part.unlink(missing_ok=True)
                        failure = f"the hub answered a resume from byte {start} with another range"
                        continue
                else:  # 200: the whole file, whether or not we asked for a range
                    start = 0
                bar = _ProgressBar(filename, expected.size, enabled=progress)
                received, failure = _stream(response, part, start=start, size=expected.size, watch=watch, bar=bar)
                bar.close()
        downloaded += received
        size = _part_size(part)
        if size == expected.size:
            _verify(part, expected, filename=filename, remote=remote, url=url)
            os.replace(part, final)
            return downloaded
        failure = watch.failure or failure or f"the connection closed at byte {size} of {expected.size}"
        if received == 0:
            break  # retry only while each attempt brings new bytes
    size = _part_size(part)
    if size == 0:
        part.unlink(missing_ok=True)  # nothing to resume
    resume = f"run again to resume from byte {size}" if size else "run again to retry"
    raise HubError(f"download of {filename} for model {remote.repo_id} broke off ({failure}) at {url}; {resume}")


def _part_size(part: Path) -> int:
    """Bytes already in `part` (0 when there is none). Anything there that is not a regular file (a FIFO, a link)
    is removed first: the name is the cache's own, and opening a FIFO to append to it would wait forever."""
    try:
        info = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    part.unlink()  # a directory raises IsADirectoryError, reported by resolve_model as a cache problem
    return 0


def _open(remote: _Remote, filename: str, *, start: int, watch: _RateWatch
          ) -> tuple[http.client.HTTPResponse, str, _Expected]:
    """GET `filename` from byte `start` on, following redirects by hand.

    -> (the open response with status 200 or 206, its URL, what the hub says the file is). Raises _HttpStatus for
    an error status and HubError when the hub cannot be reached or its answer cannot be read.
    """
    url = remote.url(filename)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if remote.token:
        headers["Authorization"] = f"Bearer {remote.token}"
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    linked = None  # the X-Linked-* headers of the hub's redirect, when it sends them
    # Per call: it reads the proxy settings of this moment, and hands every connection it makes to this watch.
    opener = urllib.request.build_opener(_NoRedirects(), _WatchedHTTP(watch), _WatchedHTTPS(watch))
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=watch.limits.timeout)
        except urllib.error.HTTPError as answer:
            with answer:
                if answer.code not in _REDIRECTS or not answer.headers.get("Location"):
                    raise _HttpStatus(answer.code, answer.headers.get("X-Error-Code"), url) from None
                linked = linked or _linked_expectation(answer.headers)
                target = _redirect_target(url, answer.headers["Location"], remote)
            if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                headers.pop("Authorization", None)
            url = target
            continue
        except urllib.error.URLError as error:  # the connection itself failed (refused, no route, DNS, timeout)
            raise HubError(
                f"cannot reach the hub for model {remote.repo_id}: {watch.failure or _reason(error.reason)} ({url}); "
                f"check the network, or set NANOLLM_OFFLINE=1 to use only the cache"
            ) from None
        except (http.client.HTTPException, OSError, ValueError) as error:  # a broken, cut or garbled answer
            raise HubError(
                f"the hub's answer for {filename} of model {remote.repo_id} could not be read: "
                f"{watch.failure or _reason(error)} ({url})"
            ) from None
        if response.status not in (200, 206):  # 204, 299, ...: 2xx answers that are no file
            response.close()
            raise _HttpStatus(response.status, response.headers.get("X-Error-Code"), url)
        return response, url, linked or _direct_expectation(response)
    raise HubError(f"model {remote.repo_id}: more than {MAX_REDIRECTS} redirects for {remote.url(filename)}")


def _redirect_target(url: str, location: str, remote: _Remote) -> str:
    """The absolute URL a redirect's Location (perhaps relative) points to; only http(s) is followed. (urllib has
    already parsed the Location: one that is no URL at all, "http://[::1", fails there as a ValueError.)"""
    target = urllib.parse.urljoin(url, location)
    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        raise HubError(f"model {remote.repo_id}: the hub redirected {url} to {location!r}, which is not an HTTP URL")
    return target


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Make urllib hand every redirect back to us as an HTTPError, so `_open` can read its headers first."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _linked_expectation(headers) -> _Expected | None:
    """Size and sha256 of an LFS file, from the hub's redirect; None when the redirect does not carry them."""
    size, etag = headers.get("X-Linked-Size"), headers.get("X-Linked-Etag")
    if size is None and etag is None:
        return None  # e.g. a renamed repo: the next hop will tell
    return _Expected(_count(size), _digest_from_etag(etag))


def _direct_expectation(response: http.client.HTTPResponse) -> _Expected:
    """Size and hash from a response that carries the bytes itself."""
    if response.status == 206:  # Content-Range: bytes 100-999/1000 -> the whole file is 1000 bytes
        size = _count((response.headers.get("Content-Range") or "").rpartition("/")[2])
    else:
        size = _count(response.headers.get("Content-Length"))
    return _Expected(size, _digest_from_etag(response.headers.get("ETag")))


def _count(value: str | None) -> int | None:
    """'8000' -> 8000; anything but plain ASCII digits -> None."""
    value = (value or "").strip()
    return int(value) if _COUNT.fullmatch(value) else None


def _digest_from_etag(etag: str | None) -> tuple[str, str] | None:
    """'"9e55...d347"' (64 hex) -> ("sha256", "9e55...d347"); 'W/"10c6...96ed8"' (40 hex) -> ("git-sha1", ...);
    a CDN's md5 or anything else -> None."""
    tag = (etag or "").strip().removeprefix("W/").strip('"').lower()
    if _SHA256.fullmatch(tag):
        return "sha256", tag
    if _GIT_SHA1.fullmatch(tag):
        return "git-sha1", tag
    return None


def _content_range_start(value: str | None) -> int | None:
    """'bytes 100-999/1000' -> 100; None unless the range is well formed (first <= last < total)."""
    match = re.fullmatch(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", (value or "").strip())
    if match is None:
        return None
    first, last, total = map(int, match.groups())
    return first if first <= last < total else None


def _check_described(expected: _Expected, *, start: int, filename: str, remote: _Remote, url: str,
                     folder: Path) -> None:
    """Refuse a file the hub does not describe (size and hash), or one larger than the cache's free space."""
    missing = [what for what, value in (("size", expected.size), ("sha256 or git sha1 ETag", expected.digest))
               if value is None]
    if missing:
        raise HubError(
            f"the hub's answer for {filename} of model {remote.repo_id} does not give its {' or '.join(missing)} "
            f"({url}), so the download could not be verified; refusing it"
        )
    free = shutil.disk_usage(folder).free
    if expected.size - start > free:
        raise HubError(
            f"{filename} of model {remote.repo_id} needs {_human(expected.size - start)} more but the cache at "
            f"{folder} has {_human(free)} free"
        )


def _stream(response, part: Path, *, start: int, size: int, watch: _RateWatch, bar: _ProgressBar
            ) -> tuple[int, str | None]:
    """Copy the response body into `part` from byte `start` on, never past the announced `size`, then flush it to
    disk. -> (bytes received, None or what interrupted the transfer).

    A dropped connection is not an exception here: the bytes received so far stay in `part` for the resume. read1
    returns whatever one read brings, so the rate watch sees a trickle byte by byte.
    """
    received = 0
    part.parent.mkdir(parents=True, exist_ok=True)  # a process that failed may have removed the empty snapshot
    try:
        with open(part, "ab" if start else "wb") as sink:
            while start + received < size:
                chunk = response.read1(min(CHUNK_BYTES, size - start - received))
                if not chunk:
                    break
                sink.write(chunk)
                received += len(chunk)
                watch.received = received
                bar.update(start + received)
            sink.flush()
            os.fsync(sink.fileno())
    except (OSError, http.client.HTTPException) as error:  # reset, timeout, truncated chunk, cut by the watch
        return received, _reason(error)
    return received, None


def _reason(error) -> str:
    """An exception (or urllib's reason) as a short single line: a hostile server's garbage status line or header
    must not put newlines or kilobytes into the one-line error."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _verify(part: Path, expected: _Expected, *, filename: str, remote: _Remote, url: str) -> None:
    """Check the hash (the size is checked by the caller); on a mismatch delete the part file and raise, so no bad
    bytes stay in the cache."""
    algorithm, announced = expected.digest
    digest = _digest_of(part, algorithm)
    if digest != announced:
        part.unlink()
        what = "sha256" if algorithm == "sha256" else "git blob sha1"
        raise HubError(
            f"download of {filename} for model {remote.repo_id} is corrupt: its {what} is {digest} where the hub "
            f"announced {announced} ({url}); deleted it"
        )


def _digest_of(path: Path, algorithm: str) -> str:
    """The sha256 of the file's bytes, or git's blob sha1: the sha1 of b"blob <size>\\0" + the bytes."""
    with files.open_regular(path) as source:
        if algorithm == "sha256":
            digest = hashlib.sha256()
        else:
            digest = hashlib.sha1(b"blob %d\0" % os.fstat(source.fileno()).st_size)
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The rate rule: a watch per attempt, fed every connection the attempt opens


class _RateWatch:
    """Cuts an attempt that brings fewer than min_rate x timeout body bytes in any window of `timeout` seconds.

    A thread wakes once per window and compares the count of body bytes (`received`, kept by the downloading
    thread) with the count at its last visit. When the window fell short it records why in `failure` and shuts the
    socket down: a blocked read, of the headers or of the body, returns at once and the attempt fails with this
    reason. Used as a context manager around one attempt.
    """

    def __init__(self, limits: _Limits):
        self.limits = limits
        self.received = 0  # body bytes of this attempt so far
        self.failure: str | None = None
        self._socket = None
        self._guard = threading.Lock()  # attach() and the thread's shutdown must not interleave
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nanollm-hub-rate", daemon=True)

    def __enter__(self) -> _RateWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def attach(self, sock) -> None:
        """Watch this connection from now on (each redirect opens a new one)."""
        with self._guard:
            self._socket = sock
            if self.failure is not None:
                self._shut()

    def _watch(self) -> None:
        window, needed = self.limits.timeout, self.limits.timeout * self.limits.min_rate
        counted = 0
        while not self._done.wait(window):
            got = self.received - counted
            if got < needed:
                with self._guard:
                    self.failure = (f"slower than the minimum of {_human(self.limits.min_rate)}/s: "
                                    f"{_human(got)} in the last {window:g} s")
                    self._shut()
                return
            counted += got

    def _shut(self) -> None:
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass


def _watched_connection(http_class, watch: _RateWatch, *args, **kwargs):
    """An http.client connection that hands its socket to `watch` as soon as it is connected."""
    connection = http_class(*args, **kwargs)
    connect = connection.connect

    def connect_and_watch():
        connect()
        watch.attach(connection.sock)

    connection.connect = connect_and_watch
    return connection


class _WatchedConnections:
    """For urllib's HTTP and HTTPS handlers: every connection they open is a `_watched_connection`."""

    def __init__(self, watch: _RateWatch):
        super().__init__()
        self.watch = watch

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_watched_connection, http_class, self.watch), req, **kwargs)


class _WatchedHTTP(_WatchedConnections, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPS(_WatchedConnections, urllib.request.HTTPSHandler):
    pass


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
