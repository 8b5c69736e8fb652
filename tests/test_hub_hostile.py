"""The hub client (weights_tools/hub.py) against a hostile server: one that stalls, trickles, lies about lengths and
hashes, redirects in loops, cuts bodies short and sends garbage headers (tests/hub_server.py, LIES and `headers`).

Whatever the server does, every call must end, within a time limit, in success or in one HubError of one line that
names the model, and the cache afterwards must hold only complete, verified files: every file under a final name is
byte-identical to the one served, no temporary file remains, the marker is there only with the whole model, and a
run against an honest server then completes the cache. The served files are the reference.
"""
import hashlib
import os
import random
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hub_server import LIES, FakeHub, call_with_deadline, git_blob_sha1
from tests.test_hub import REPO, add_model
from weights_tools.hub import LOCKS_FOLDER, SNAPSHOT_MARKER, HubError, resolve_model

TIME_LIMIT_S = 20  # per call; the worst lie (a trickle, cut once per window over 5 attempts) takes about 1 s
LIMITS = {"NANOLLM_HUB_TIMEOUT": "0.2", "NANOLLM_HUB_MIN_RATE": "2000"}  # 400 B per 0.2 s window


def fetch(hub: FakeHub, cache: Path):
    """resolve_model against `hub` with small limits, in a thread with a deadline. -> the path, or the HubError."""
    environment = {**LIMITS, "NANOLLM_HUB_URL": hub.url, "no_proxy": "*"}
    with mock.patch.dict(os.environ, environment):
        for name in ("NANOLLM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
            os.environ.pop(name, None)
        try:
            return call_with_deadline(lambda: resolve_model(REPO, cache_dir=cache, progress=False), TIME_LIMIT_S)
        except HubError as error:
            message = str(error)
            assert "\n" not in message and REPO in message, message
            return error


def check_cache(cache: Path, served: dict[str, bytes], *, complete: bool) -> None:
    """Only complete, verified files under final names; nothing temporary; the marker only for a whole model."""
    snapshot = cache / REPO.replace("/", "--") / "main"
    names = {path.name for path in snapshot.iterdir()} if snapshot.exists() else set()
    for name in names - {SNAPSHOT_MARKER}:
        assert name in served or name.removesuffix(".part") in served, name
        if name in served:
            assert (snapshot / name).read_bytes() == served[name], name
    assert (SNAPSHOT_MARKER in names) == complete
    if complete:
        assert names == {*served, SNAPSHOT_MARKER}
    for path in cache.rglob("*"):
        assert not path.name.endswith(".tmp"), path
        if LOCKS_FOLDER in path.relative_to(cache).parts and path.is_file():
            assert path.name.endswith(".lock") and path.stat().st_size == 0, path


def run_and_check(hub: FakeHub, cache: Path, served: dict[str, bytes]) -> object:
    """One hostile call and the checks; then the honest server, which must complete the cache. -> the first
    outcome (the path or the HubError)."""
    before = {repo: dict(files) for repo, files in hub.repos.items()}
    outcome = fetch(hub, cache)
    check_cache(cache, served, complete=not isinstance(outcome, HubError))
    assert hub.repos == before  # the served files are untouched
    hub.lies.clear(), hub.headers.clear(), hub.drop_once.clear(), hub.pace.clear()
    hub.ignore_range = False
    honest = fetch(hub, cache)
    if isinstance(honest, HubError):  # only a stale .part of wrong bytes, found and deleted by this run, may fail it
        assert "is corrupt" in str(honest), honest
        honest = fetch(hub, cache)
    assert not isinstance(honest, HubError), honest
    check_cache(cache, served, complete=True)
    return outcome


@pytest.mark.parametrize("size", ["small", "lfs"])
@pytest.mark.parametrize("lie", sorted(LIES))
def test_every_lie(size, lie):
    """Each lie told about a git-stored file (tokenizer.json) and an LFS file (model.safetensors): one HubError that
    names the file (each lie makes the file unverifiable or undeliverable), then the honest server completes the
    cache."""
    target = "tokenizer.json" if size == "small" else "model.safetensors"
    with FakeHub() as hub, tempfile.TemporaryDirectory() as cache:
        served = add_model(hub)
        hub.lies[target] = lie
        outcome = run_and_check(hub, Path(cache), served)
    assert isinstance(outcome, HubError) and target in str(outcome), outcome


HEADERS = ("ETag", "Content-Length", "X-Linked-Size", "X-Linked-Etag", "Content-Range", "Location",
           "Transfer-Encoding")
GARBAGE = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)


def plausible_values(data: bytes) -> list[str]:
    """Header values a confused server might send for a file holding `data`: near-true sizes and hashes, other
    files' hashes, ranges that do not fit, locations that lead nowhere."""
    size, sha256, sha1 = len(data), hashlib.sha256(data).hexdigest(), git_blob_sha1(data)
    return [str(size), str(size + 1), str(max(size - 1, 0)), "0", "-1", "99999999999999999999", "²",
            f'"{sha256}"', f'W/"{sha1}"', sha1, f'"{git_blob_sha1(data + b"x")}"', hashlib.md5(data).hexdigest(),
            f"bytes 0-{size - 1}/{size}", f"bytes 10-5/{size}", f"bytes 0-{size}/{size}", "bytes */0",
            "/cdn/" + "0" * 64, "ftp://127.0.0.1/x", "http://127.0.0.1:1/x", "", "chunked", "gzip"]


class _Recorder:
    """Stands in for a FakeHub while a strategy learns the model's file names and bytes (add_model only calls add)."""

    def add(self, repo, filename, data):
        pass


@st.composite
def hostile_setups(draw):
    """A model (sharded or not) and what the server does wrong: lies, replaced headers, a dropped connection, an
    ignored Range, a slow pace, and a stale .part (a true prefix or wrong bytes) left by an earlier run."""
    sharded = draw(st.booleans())
    served = add_model(_Recorder(), sharded=sharded)
    names = sorted(served)
    headers = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        values = st.one_of(st.sampled_from(plausible_values(served[name])), GARBAGE)
        headers[name] = draw(st.dictionaries(st.sampled_from(HEADERS), values, min_size=1, max_size=2))
    stale = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=1)):
        data = served[name]
        true_prefix = data[:draw(st.integers(0, len(data)))]
        stale[name + ".part"] = draw(st.sampled_from([true_prefix, random.Random(len(data)).randbytes(len(data))]))
    return {
        "sharded": sharded,
        "lies": draw(st.dictionaries(st.sampled_from(names), st.sampled_from(sorted(LIES)), max_size=2)),
        "headers": headers,
        "drop_once": draw(st.sets(st.sampled_from(names), max_size=2)),
        "ignore_range": draw(st.booleans()),
        "pace": draw(st.dictionaries(st.sampled_from(names), st.sampled_from([500.0, 50_000.0]), max_size=1)),
        "stale": stale,
    }


@settings(max_examples=40)
@given(hostile_setups())
def test_hostile_server(setup):
    """A drawn mix of everything a server can get wrong, on every file of a model: every call ends in success or one
    HubError within the time limit, the cache holds only verified files, and an honest server completes it."""
    with FakeHub() as hub, tempfile.TemporaryDirectory() as cache:
        served = add_model(hub, sharded=setup["sharded"])
        hub.lies.update(setup["lies"])
        hub.headers.update(setup["headers"])
        hub.drop_once.update(setup["drop_once"])
        hub.ignore_range = setup["ignore_range"]
        hub.pace.update(setup["pace"])
        snapshot = Path(cache) / REPO.replace("/", "--") / "main"
        snapshot.mkdir(parents=True)
        for name, data in setup["stale"].items():
            (snapshot / name).write_bytes(data)
        run_and_check(hub, Path(cache), served)
