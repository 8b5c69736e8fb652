"""Hub downloads (weights_tools/hub.py) against a local stand-in for the hub (tests/hub_server.py).

Every file is a few KB of seeded random bytes, so a byte-for-byte comparison with what the server holds is the
reference: a download is right when the cached file equals the served one exactly.
"""
import ast
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanollm.chat import chat_template_for
from nanollm.tokenizer import load_tokenizer
from tests.conftest import PROJECT_ROOT
from tests.hf_models import Options, build_checkpoint
from tests.hub_server import FakeHub, call_with_deadline, git_blob_sha1
from tests.test_bin_checkpoints import assert_same_weights, write_bin_twin
from weights_tools import hub as hub_module
from weights_tools.checkpoint import open_weights
from weights_tools.hub import SNAPSHOT_MARKER, HubError, resolve_model

REPO = "org/tiny"
WEIGHTS_BYTES = 8000  # over the fake hub's LFS threshold (1024), so served through a redirect


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running fake hub that resolve_model talks to, with a clean environment and a cache under tmp_path."""
    for name in ("NANOLLM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")  # a proxy set on the machine must not intercept 127.0.0.1
    monkeypatch.setenv("NANOLLM_CACHE", str(tmp_path / "cache"))
    with FakeHub() as server:
        monkeypatch.setenv("NANOLLM_HUB_URL", server.url)
        yield server


def add_model(server: FakeHub, repo: str = REPO, *, sharded: bool = False, weights: str = "model.safetensors"
              ) -> dict[str, bytes]:
    """Put a small model on the fake hub, its weights in `weights` (model.safetensors or pytorch_model.bin, or the
    index and two shards of either). -> its files. No generation_config.json, vocab.json, etc.: those 404."""
    files = {
        "config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}).encode(),
        "tokenizer.json": random_bytes(700, seed=1),  # under the LFS threshold: served directly
        "merges.txt": b"#version: 0.2\nh e\n",
    }
    if sharded:
        stem, suffix = weights.split(".", 1)  # "model-00001-of-00002.safetensors", "pytorch_model-00001-of-00002.bin"
        first, second = (f"{stem}-0000{k}-of-00002.{suffix}" for k in (1, 2))
        files[first] = random_bytes(WEIGHTS_BYTES, seed=2)
        files[second] = random_bytes(5000, seed=3)
        weight_map = {"wte": first, "h.0.w": second, "h.1.w": second}
        files[f"{weights}.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    else:
        files[weights] = random_bytes(WEIGHTS_BYTES, seed=4)
    for name, data in files.items():
        server.add(repo, name, data)
    return files


def snapshot_dir(tmp_path, repo=REPO, revision="main"):
    return tmp_path / "cache" / repo.replace("/", "--") / revision


def assert_snapshot_holds(path, files):
    """The directory holds exactly `files` (plus the marker), byte for byte, and no part file."""
    on_disk = sorted(p.name for p in path.iterdir())
    assert on_disk == sorted([*files, SNAPSHOT_MARKER])
    for name, data in files.items():
        assert (path / name).read_bytes() == data, name


def test_full_download(hub, tmp_path):
    """The cache layout is <cache>/org--tiny/main; every file the hub has arrives intact, the weights through
    the CDN redirect; files the hub lacks (vocab.json, generation_config.json) are simply absent."""
    files = add_model(hub)
    path = resolve_model(REPO, progress=False)
    assert path == snapshot_dir(tmp_path)
    assert_snapshot_holds(path, files)
    assert len(hub.requests_for("/cdn/")) == 1  # model.safetensors came from the redirect target
    assert len(hub.requests_for("/resolve/main/vocab.json")) == 1  # asked for, 404, no harm


def test_sharded_model(hub, tmp_path):
    """With an index, every shard it names is fetched and model.safetensors is never asked for."""
    files = add_model(hub, sharded=True)
    path = resolve_model(REPO, progress=False)
    assert_snapshot_holds(path, files)
    assert [path for path, _ in hub.requests if path.endswith("/model.safetensors")] == []


def test_resume_after_connection_drop(hub, tmp_path):
    """The CDN drops the connection after half of the 8000 bytes; the same call resumes with Range: bytes=4000-
    and the cached file equals the original."""
    files = add_model(hub)
    hub.drop_once.add("model.safetensors")
    path = resolve_model(REPO, progress=False)
    assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
    cdn = hub.requests_for("/cdn/")
    assert len(cdn) == 2
    assert "Range" not in cdn[0]
    assert cdn[1]["Range"] == f"bytes={WEIGHTS_BYTES // 2}-"


@pytest.mark.parametrize("ignore_range", [False, True], ids=["206", "server-ignores-range"])
def test_resume_from_part_file_of_an_earlier_run(hub, tmp_path, ignore_range):
    """A .part holding the first 3000 bytes is resumed with Range: bytes=3000-; a server that ignores the range
    answers 200 with the whole file, and the download starts over. Either way the result is byte-identical."""
    files = add_model(hub)
    hub.ignore_range = ignore_range
    part = snapshot_dir(tmp_path) / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["model.safetensors"][:3000])
    path = resolve_model(REPO, progress=False)
    assert_snapshot_holds(path, files)
    assert [h.get("Range") for h in hub.requests_for("/cdn/")] == ["bytes=3000-"]


def test_part_file_already_complete_is_redone(hub, tmp_path):
    """A .part as long as the file (the previous run died before the rename) gets 416 for bytes=8000-; the
    download restarts from zero and succeeds."""
    files = add_model(hub)
    part = snapshot_dir(tmp_path) / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["model.safetensors"])
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)
    assert [h.get("Range") for h in hub.requests_for("/cdn/")] == [f"bytes={WEIGHTS_BYTES}-", None]


def test_corrupt_download_leaves_nothing(hub, tmp_path):
    """One flipped byte: the sha256 from X-Linked-Etag does not match, the call fails, and the cache holds no
    weights file, no .part and no marker. Once the server is fixed, the next call succeeds."""
    files = add_model(hub)
    hub.corrupt.add("model.safetensors")
    with pytest.raises(HubError, match="corrupt.*sha256"):
        resolve_model(REPO, progress=False)
    left = sorted(p.name for p in snapshot_dir(tmp_path).iterdir())
    assert left == ["config.json"]  # verified on its own; without weights and marker it is no model
    hub.corrupt.clear()
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)


def test_stale_part_file_fails_verification_and_is_deleted(hub, tmp_path):
    """A .part whose bytes are not the file's (say the branch moved since) resumes into a wrong file: the sha256
    check catches it and deletes it, so the next run starts clean."""
    add_model(hub)
    part = snapshot_dir(tmp_path) / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 3000)
    with pytest.raises(HubError, match="sha256"):
        resolve_model(REPO, progress=False)
    assert not part.exists() and not (part.parent / "model.safetensors").exists()


def test_gated_model_needs_token(hub, tmp_path, monkeypatch):
    """Without a token: 401 and a message pointing at HF_TOKEN. A wrong token: 403. With HF_TOKEN: the download
    works, and the token goes to the hub on every resolve request."""
    files = add_model(hub)
    hub.token = "hf_secret"
    with pytest.raises(HubError, match="gated or private.*HF_TOKEN"):
        resolve_model(REPO, progress=False)
    with pytest.raises(HubError, match="token sent has no access.*HTTP 403"):
        resolve_model(REPO, progress=False, token="hf_wrong")
    assert not (snapshot_dir(tmp_path) / SNAPSHOT_MARKER).exists()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)
    assert hub.requests_for("/resolve/")[-1]["Authorization"] == "Bearer hf_secret"


def test_token_is_not_sent_to_another_host(hub, tmp_path, monkeypatch):
    """When the LFS redirect points at another host (a second server standing in for the CDN), the file still
    arrives, and that host never sees the Authorization header."""
    files = add_model(hub)
    hub.token = "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with FakeHub() as cdn:
        add_model(cdn)
        hub.cdn_base = cdn.url
        assert_snapshot_holds(resolve_model(REPO, progress=False), files)
        assert len(cdn.requests) == 1
        assert "Authorization" not in cdn.requests[0][1]


def test_renamed_repo_follows_relative_redirect(hub, tmp_path):
    """The hub answers gpt2's URLs with a 307 to openai-community/gpt2's (a relative Location); the files arrive
    and are cached under the name the user asked for."""
    files = add_model(hub, "openai-community/gpt2")
    hub.renamed["gpt2"] = "openai-community/gpt2"
    path = resolve_model("gpt2", progress=False)
    assert path == snapshot_dir(tmp_path, "gpt2")
    assert_snapshot_holds(path, files)


@pytest.mark.parametrize("variable", ["NANOLLM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_from_cache(hub, tmp_path, monkeypatch, variable):
    """After one download the server stops; offline mode returns the cached snapshot."""
    files = add_model(hub)
    first = resolve_model(REPO, progress=False)
    hub.stop()
    monkeypatch.setenv(variable, "1")
    assert resolve_model(REPO, progress=False) == first
    assert_snapshot_holds(first, files)


def test_complete_cache_needs_no_network(hub, tmp_path):
    """A complete snapshot is used as is, even when not offline: the stopped server is never contacted."""
    add_model(hub)
    first = resolve_model(REPO, progress=False)
    hub.stop()
    assert resolve_model(REPO, progress=False) == first


def test_offline_without_cache(hub, tmp_path, monkeypatch):
    """Offline and nothing cached: a HubError that names the model and says it is not cached; no request made."""
    add_model(hub)
    monkeypatch.setenv("NANOLLM_OFFLINE", "1")
    with pytest.raises(HubError, match=r"model org/tiny \(revision main\) is not in the cache.*NANOLLM_OFFLINE"):
        resolve_model(REPO, progress=False)
    with pytest.raises(HubError, match="offline=True"):
        resolve_model(REPO, progress=False, offline=True)
    assert hub.requests == []


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_refused(hub, tmp_path, monkeypatch):
    """Nothing listens on the port: one HubError line naming the model and the URL, and no snapshot."""
    port = unused_port()
    monkeypatch.setenv("NANOLLM_HUB_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError) as caught:
        resolve_model(REPO, progress=False)
    message = str(caught.value)
    assert "cannot reach the hub for model org/tiny" in message
    assert f"http://127.0.0.1:{port}/org/tiny/resolve/main/config.json" in message
    assert "\n" not in message
    assert not (tmp_path / "cache" / "org--tiny").exists()  # not even an empty folder


def test_timeout(hub, tmp_path, monkeypatch):
    """A server that accepts connections but never answers: after NANOLLM_HUB_TIMEOUT (here 0.3 s) the request
    becomes a HubError naming the file instead of hanging. Both limits end at about the same moment, so the reason
    is the read's timeout or the rate rule's empty window (0 B in 0.3 s), whichever fires first."""
    monkeypatch.setenv("NANOLLM_HUB_TIMEOUT", "0.3")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads or answers
        monkeypatch.setenv("NANOLLM_HUB_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(HubError, match="config.json.*(timed out|slower than the minimum of 10.0 kB/s: 0 B)"):
            resolve_model(REPO, progress=False)
        assert time.monotonic() - started < 5


def test_unknown_model_and_revision(hub, tmp_path):
    """No such repo: the hub says 401 without a token (404 with one), both read as "no model named". No such
    revision: the hub's RevisionNotFound code gives its own message."""
    add_model(hub)
    with pytest.raises(HubError, match="no model named org/absent on the hub"):
        resolve_model("org/absent", progress=False)
    with pytest.raises(HubError, match="no model named org/absent on the hub"):
        resolve_model("org/absent", progress=False, token="hf_any")
    with pytest.raises(HubError, match="has no revision 'v9'"):
        resolve_model(REPO, revision="v9", progress=False)


WEIGHTS_IN_ORDER = ["model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                    "pytorch_model.bin"]


def weight_requests(hub) -> list[str]:
    """The weights files asked for, in order (shards and CDN requests left out)."""
    names = [path.rpartition("/")[2] for path, _ in hub.requests if "/resolve/" in path]
    return [name for name in names if name in WEIGHTS_IN_ORDER]


def test_model_without_weights(hub, tmp_path):
    """A repo with config.json but no weights file nanollm reads (a TensorFlow .h5, say) is refused in one line
    naming every file looked for, after asking for each once."""
    hub.add(REPO, "config.json", b"{}")
    hub.add(REPO, "tf_model.h5", b"weights")
    with pytest.raises(HubError, match="has no weights nanollm reads: none of model.safetensors, "
                                       "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json"):
        resolve_model(REPO, progress=False)
    assert weight_requests(hub) == WEIGHTS_IN_ORDER
    assert not (snapshot_dir(tmp_path) / SNAPSHOT_MARKER).exists()


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_model_with_only_pytorch_weights(hub, tmp_path, sharded):
    """A repo with neither safetensors file fetches pytorch_model.bin, or its index and every shard it names, with
    the same verification as any file."""
    files = add_model(hub, sharded=sharded, weights="pytorch_model.bin")
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)
    assert weight_requests(hub) == WEIGHTS_IN_ORDER[:3] + ([] if sharded else ["pytorch_model.bin"])


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_safetensors_is_fetched_when_both_formats_are_there(hub, tmp_path, sharded):
    """A repo holding both (most older GPT-2s): only the safetensors weights are downloaded, the .bin never asked
    for, as nanollm would read the safetensors anyway."""
    files = add_model(hub, sharded=sharded)
    hub.add(REPO, "pytorch_model.bin", random_bytes(WEIGHTS_BYTES, seed=5))
    hub.add(REPO, "pytorch_model.bin.index.json", json.dumps({"weight_map": {"w": "pytorch_model-1.bin"}}).encode())
    hub.add(REPO, "pytorch_model-1.bin", random_bytes(3000, seed=6))
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)
    assert not [path for path, _ in hub.requests if ".bin" in path]


def test_a_fetched_pytorch_model_reads_as_the_folder_it_came_from(hub, tmp_path):
    """A tiny GPT-2 whose weights are a sharded pytorch_model.bin, written as transformers 4 wrote one: once fetched,
    its weights read exactly as those of the folder the hub served."""
    st_dir, _ = build_checkpoint(tmp_path / "st", Options(arch="gpt2", tied=True, storage="F16"))
    write_bin_twin(st_dir, tmp_path / "bin", "F16", sharded=True)
    for path in (tmp_path / "bin").iterdir():
        hub.add(REPO, path.name, path.read_bytes())
    fetched = resolve_model(REPO, progress=False)
    assert_snapshot_holds(fetched, {path.name: path.read_bytes() for path in (tmp_path / "bin").iterdir()})
    served = open_weights(tmp_path / "bin")
    assert len(served.files) > 1 and "lm_head.weight" in served
    assert_same_weights(open_weights(fetched), served, served)


@pytest.mark.parametrize("shard", ["../../evil.bin", ".nanollm-complete.json", "pytorch_model.bin.part", "x.bin.lock",
                                   ".hidden.bin", "sub/x.bin", "a b.bin", "model.safetensors", "", 7])
def test_a_pytorch_index_names_plain_bin_files_only(hub, tmp_path, shard):
    """The same rule for a .bin index as for a safetensors one: a plain *.bin name, else refused by name before
    anything is fetched under it."""
    hub.add(REPO, "config.json", b"{}")
    hub.add(REPO, "pytorch_model.bin.index.json", json.dumps({"weight_map": {"w": shard}}).encode())
    with pytest.raises(HubError, match=f"pytorch_model.bin.index.json names a shard {re.escape(repr(shard))}, which "
                                       r"is not a plain \*\.bin file name"):
        resolve_model(REPO, progress=False)
    assert sorted(p.name for p in snapshot_dir(tmp_path).iterdir()) == ["config.json", "pytorch_model.bin.index.json"]
    assert not (tmp_path / "evil.bin").exists()


def test_index_naming_a_path_is_refused(hub, tmp_path):
    """Shard names come from the network and become paths: "../../evil" must not escape the snapshot."""
    hub.add(REPO, "config.json", b"{}")
    hub.add(REPO, "model.safetensors.index.json", json.dumps({"weight_map": {"w": "../../evil"}}).encode())
    with pytest.raises(HubError, match=r"names a shard '\.\./\.\./evil', which is not a plain \*\.safetensors"):
        resolve_model(REPO, progress=False)
    assert not (tmp_path / "evil").exists()


def test_local_directory_and_bad_ids(hub, tmp_path):
    """A directory is returned unchanged; strings that are neither a directory nor a repo id are refused; the
    network is never used for either."""
    assert resolve_model(str(tmp_path)) == tmp_path
    for source in ["../tiny", "a/b/c", "org--x/y", "", "./missing"]:
        with pytest.raises(HubError, match="neither a local directory nor a hub repo id"):
            resolve_model(source)
    with pytest.raises(HubError, match="not a revision"):
        resolve_model(REPO, revision="../../x")
    assert hub.requests == []


def test_summary_line_and_quiet_mode(hub, tmp_path, capsys):
    """stderr (not a terminal here) gets one summary line per download; progress=False prints nothing."""
    add_model(hub)
    resolve_model(REPO, cache_dir=tmp_path / "a", progress=False)
    assert capsys.readouterr().err == ""
    resolve_model(REPO, cache_dir=tmp_path / "b")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanollm: fetched org/tiny@main:")


class FakeTerminal:
    """A stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_bar_on_a_terminal(hub, tmp_path, monkeypatch):
    """On a terminal, a file over PROGRESS_MIN_BYTES (lowered to 1000 here) gets a bar that ends at 100% and the
    file's size; smaller files get none."""
    add_model(hub)
    monkeypatch.setattr(hub_module, "PROGRESS_MIN_BYTES", 1000)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    resolve_model(REPO)
    assert "model.safetensors  100% [" + "#" * 30 + "] 8.0 kB / 8.0 kB" in terminal.text
    assert "tokenizer.json" not in terminal.text  # 700 bytes: under the threshold


# ----------------------------------------------------------------------------------------------------------------
# Verification: a file gets its final name only once its size and hash are the ones the hub announced


def test_blob_sha1_is_gits_and_huggingface_hubs(tmp_path):
    """A git-stored file's ETag is its blob sha1, sha1(b"blob <size>\\0" + bytes). The fake hub's and the client's
    computations agree with huggingface_hub's git_hash; the empty file's is git's well-known e69de29..."""
    from huggingface_hub.utils.sha import git_hash

    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    for seed, data in enumerate([b"", b"hello\n", random_bytes(5000, seed=9)]):
        path = tmp_path / f"file{seed}"
        path.write_bytes(data)
        assert git_blob_sha1(data) == git_hash(data) == hub_module._digest_of(path, "git-sha1")


@pytest.mark.parametrize("form", ['"{}"', 'W/"{}"', "{}", ' "{}" '])
def test_etag_forms(form):
    """RFC 9110 allows a quoted ETag, weak or strong; both hashes are read from any of these forms (as
    huggingface_hub's _normalize_etag), a 32-hex md5 (a CDN's ETag) from none."""
    sha1, sha256 = "10c66461e4c109db5a2196bff4bb59be30396ed8", hashlib.sha256(b"x").hexdigest()
    assert hub_module._digest_from_etag(form.format(sha1)) == ("git-sha1", sha1)
    assert hub_module._digest_from_etag(form.format(sha256.upper())) == ("sha256", sha256)
    assert hub_module._digest_from_etag(form.format(hashlib.md5(b"x").hexdigest())) is None


def test_weak_etag_from_the_hub_is_accepted(hub, tmp_path):
    """The same blob sha1 sent weak (W/"...") verifies config.json as well as the usual quoted form."""
    files = add_model(hub)
    hub.headers["config.json"] = {"ETag": f'W/"{git_blob_sha1(files["config.json"])}"'}
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)


LYING = [  # (file, lie, what the error says; whether a .part may stay for a resume)
    ("config.json", "sha", r"config\.json .*corrupt: its git blob sha1 is [0-9a-f]{40} where the hub announced", False),
    ("model.safetensors", "sha", r"model\.safetensors .*corrupt: its sha256 is [0-9a-f]{64} where the hub", False),
    ("tokenizer.json", "size-", r"tokenizer\.json .*corrupt: its git blob sha1", False),
    ("model.safetensors", "size-", r"model\.safetensors .*corrupt: its sha256", False),
    ("config.json", "size+", r"config\.json .*broke off", True),
    ("model.safetensors", "size+", r"model\.safetensors .*broke off", True),
    ("tokenizer.json", "short-body", r"tokenizer\.json .*broke off \(the connection closed at byte \d+ of 700\)", True),
    ("model.safetensors", "short-body", r"model\.safetensors .*broke off \(the connection closed at byte", True),
    ("config.json", "no-etag", r"answer for config\.json .* does not give its sha256 or git sha1 ETag", False),
    ("model.safetensors", "no-etag", r"answer for model\.safetensors .* does not give its sha256", False),
    ("merges.txt", "bad-length", r"answer for merges\.txt .* does not give its size", False),
]


@pytest.mark.parametrize("name, lie, message, part_may_stay", LYING, ids=[f"{n}-{lie}" for n, lie, *_ in LYING])
def test_lying_server_leaves_nothing(hub, tmp_path, name, lie, message, part_may_stay):
    """A wrong hash, a wrong length, a short body or a missing hash: one HubError naming the file and the problem,
    no final file and no marker (a .part only after a broken-off transfer, to resume). Once the server stops
    lying, the next call completes the same cache."""
    files = add_model(hub)
    hub.lies[name] = lie
    with pytest.raises(HubError, match=message):
        resolve_model(REPO, progress=False)
    left = {p.name for p in snapshot_dir(tmp_path).iterdir()} if snapshot_dir(tmp_path).exists() else set()
    assert name not in left and SNAPSHOT_MARKER not in left
    assert left <= {*files, f"{name}.part"} if part_may_stay else left <= set(files)
    for other in left & set(files):
        assert (snapshot_dir(tmp_path) / other).read_bytes() == files[other]
    hub.lies.clear()
    assert_snapshot_holds(resolve_model(REPO, progress=False), files)


@pytest.mark.parametrize("shard", [".nanollm-complete.json", "model.safetensors.part", "shard.lock", "config.json",
                                   ".hidden.safetensors", "sub/x.safetensors", "a b.safetensors", "", 7])
def test_index_cannot_name_the_caches_own_files(hub, tmp_path, shard):
    """Shard names come from the network: only plain *.safetensors file names pass. The marker, a .part, a lock,
    another model file or a path are refused by name before anything is fetched under that name."""
    files = {"config.json": b"{}", "model.safetensors.index.json": json.dumps({"weight_map": {"w": shard}}).encode()}
    for filename, data in files.items():
        hub.add(REPO, filename, data)
    with pytest.raises(HubError, match=f"names a shard {re.escape(repr(shard))}, which is not a plain"):
        resolve_model(REPO, progress=False)
    assert sorted(p.name for p in snapshot_dir(tmp_path).iterdir()) == sorted(files)  # no marker, nothing else
    assert (snapshot_dir(tmp_path) / "config.json").read_bytes() == b"{}"
    paths = [path for path, _ in hub.requests]
    after_index = paths[paths.index(f"/{REPO}/resolve/main/model.safetensors.index.json") + 1:]
    assert not [path for path in after_index if path.endswith(f"/{shard}")]


# ----------------------------------------------------------------------------------------------------------------
# Which files: everything a loaded model reads


def file_names_in(path: Path) -> set[str]:
    """Every string constant in a Python file that looks like a file name ("tokenizer_config.json")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"[\w-]+\.(json|jinja|txt|model|bpe)", node.value)}


def test_the_hub_client_fetches_what_the_loaders_read():
    """Every file name nanollm/tokenizer/loading.py and nanollm/loader.py read is one the client fetches, except
    GPT-2's original encoder.json/vocab.bpe, which hub repos carry as vocab.json/merges.txt. A file added to a
    loader without the client knowing fails here."""
    fetched = {hub_module.CONFIG_FILE, *hub_module.OPTIONAL_FILES, *hub_module.TOKENIZER_FILES}
    read = file_names_in(PROJECT_ROOT / "nanollm" / "tokenizer" / "loading.py")
    read |= file_names_in(PROJECT_ROOT / "nanollm" / "loader.py")
    assert {"chat_template.jinja", "added_tokens.json", "generation_config.json"} <= read  # the check sees them
    assert read - {"encoder.json", "vocab.bpe"} <= fetched


def tiny_chat_model() -> dict[str, bytes]:
    """A byte-level BPE model folder written by hand: vocab.json (the 256 byte characters and 3 merges), merges.txt,
    two chat tokens only in added_tokens.json, the EOS in special_tokens_map.json, and a chat template only in
    chat_template.jinja (as transformers 5 saves it), marked so the test can see it was the one used."""
    from nanollm.tokenizer.byte_level import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["Ġ h", "Ġh i", "h i"]
    vocab = {ch: i for i, ch in enumerate(chars)} | {"Ġh": 256, "Ġhi": 257, "hi": 258}
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant (template from chat_template.jinja)\n{% endif %}")
    return {
        "config.json": json.dumps({"model_type": "gpt2", "vocab_size": 261}).encode(),
        "generation_config.json": json.dumps({"eos_token_id": 260}).encode(),
        "model.safetensors": random_bytes(WEIGHTS_BYTES, seed=5),  # never loaded here
        "vocab.json": json.dumps(vocab).encode(),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 64}).encode(),
        "added_tokens.json": json.dumps({"<|im_start|>": 259, "<|im_end|>": 260}).encode(),
        "special_tokens_map.json": json.dumps({"eos_token": "<|im_end|>", "bos_token": None}).encode(),
        "chat_template.jinja": template.encode(),
    }


def test_fetched_model_chats_as_on_disk(hub, tmp_path):
    """The same folder on disk and fetched through the hub: every file arrives, and the tokenizers render the chat
    with chat_template.jinja and encode it (added chat tokens included) identically."""
    files = tiny_chat_model()
    on_disk = tmp_path / "model"
    on_disk.mkdir()
    for name, data in files.items():
        (on_disk / name).write_bytes(data)
        hub.add(REPO, name, data)
    fetched = resolve_model(REPO, progress=False)
    assert_snapshot_holds(fetched, files)

    messages = [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi hi <|im_end|>"}]
    local, remote = load_tokenizer(on_disk), load_tokenizer(fetched)
    text = chat_template_for(local).render(messages)
    assert "(template from chat_template.jinja)" in text
    assert chat_template_for(remote).render(messages) == text
    ids = local.encode_prompt(text)
    assert 259 in ids and 260 in ids  # the chat tokens of added_tokens.json
    assert remote.encode_prompt(text) == ids
    assert remote.eos_token_id == local.eos_token_id == 260


# ----------------------------------------------------------------------------------------------------------------
# Time limits: a deadline through the rate rule, not only a per-read timeout


def test_trickling_server_is_cut(hub, tmp_path, monkeypatch):
    """The CDN sends the weights at 1 byte a second, each byte well within the read timeout. With a minimum rate of
    1 kB/s over 0.5 s windows, each attempt ends after one window: a HubError naming the file and the rate within
    a few seconds, and no weights file or marker (a .part holding the few bytes may stay, to resume)."""
    add_model(hub)
    hub.pace["model.safetensors"] = 1.0
    monkeypatch.setenv("NANOLLM_HUB_TIMEOUT", "0.5")
    monkeypatch.setenv("NANOLLM_HUB_MIN_RATE", "1000")
    started = time.monotonic()
    with pytest.raises(HubError, match=r"model\.safetensors .*slower than the minimum of 1\.0 kB/s: \d B in the "
                                       r"last 0\.5 s"):
        call_with_deadline(lambda: resolve_model(REPO, progress=False), 20)
    assert time.monotonic() - started < 5
    left = {p.name for p in snapshot_dir(tmp_path).iterdir()}
    assert "model.safetensors" not in left and SNAPSHOT_MARKER not in left


def test_trickling_headers_are_cut(hub, tmp_path, monkeypatch):
    """A server that sends even its status line and headers a byte at a time (20 B/s) is cut by the same rule: the
    watch shuts the socket while http.client is still reading headers."""
    add_model(hub)
    hub.lies["config.json"] = "slow-headers"
    monkeypatch.setenv("NANOLLM_HUB_TIMEOUT", "0.3")
    started = time.monotonic()
    with pytest.raises(HubError, match=r"answer for config\.json .*slower than the minimum of 10\.0 kB/s"):
        call_with_deadline(lambda: resolve_model(REPO, progress=False), 20)
    assert time.monotonic() - started < 3


def test_slow_but_steady_download_passes(hub, tmp_path, monkeypatch):
    """The rule is a minimum rate, not a deadline for every file: weights sent at 20 kB/s over 0.4 s, across two
    windows of 0.2 s with a minimum of 5 kB/s, arrive intact."""
    files = add_model(hub)
    hub.pace["model.safetensors"] = 20_000
    monkeypatch.setenv("NANOLLM_HUB_TIMEOUT", "0.2")
    monkeypatch.setenv("NANOLLM_HUB_MIN_RATE", "5000")
    assert_snapshot_holds(call_with_deadline(lambda: resolve_model(REPO, progress=False), 20), files)


def test_https_and_its_rate_rule(tmp_path, monkeypatch):
    """Over TLS (a self-signed certificate made by openssl, trusted through SSL_CERT_FILE) a model arrives intact,
    and the rate rule cuts a trickle there too: the watch shuts an SSL socket as it shuts a plain one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for a local HTTPS server")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NANOLLM_HUB_TIMEOUT", "0.3")
    monkeypatch.setenv("NANOLLM_HUB_MIN_RATE", "1000")
    with FakeHub(tls=(str(certificate), str(key))) as server:
        monkeypatch.setenv("NANOLLM_HUB_URL", server.url)
        files = add_model(server)
        assert server.url.startswith("https://")
        assert_snapshot_holds(resolve_model(REPO, cache_dir=tmp_path / "a", progress=False), files)
        server.pace["model.safetensors"] = 1.0
        with pytest.raises(HubError, match=r"model\.safetensors .*slower than the minimum of 1\.0 kB/s"):
            call_with_deadline(lambda: resolve_model(REPO, cache_dir=tmp_path / "b", progress=False), 20)


@pytest.mark.parametrize("variable, value", [("NANOLLM_HUB_MIN_RATE", "fast"), ("NANOLLM_HUB_MIN_RATE", "0"),
                                             ("NANOLLM_HUB_TIMEOUT", "-1"), ("NANOLLM_HUB_TIMEOUT", "nan")])
def test_bad_limits_are_refused_by_name(hub, tmp_path, monkeypatch, variable, value):
    """A limit from the environment that is not a positive number is one HubError naming the variable; no
    request is made."""
    add_model(hub)
    monkeypatch.setenv(variable, value)
    with pytest.raises(HubError, match=f"{variable}='{value}' is not a positive number"):
        resolve_model(REPO, progress=False)
    assert hub.requests == []


# ----------------------------------------------------------------------------------------------------------------
# The cache holds only regular files: a FIFO where one should be is no hang


@pytest.mark.parametrize("name", ["config.json", SNAPSHOT_MARKER, "model.safetensors.part"])
def test_fifo_in_the_cache_does_not_hang(hub, tmp_path, monkeypatch, name):
    """A FIFO where a cached file, the marker or a .part should be: the snapshot is not complete, the file is
    fetched again and replaces the FIFO; offline, the answer is a HubError at once."""
    files = add_model(hub)
    snapshot = resolve_model(REPO, progress=False)
    (snapshot / name).unlink(missing_ok=True)
    if name != SNAPSHOT_MARKER:  # a missing file only counts for a snapshot without the marker
        (snapshot / SNAPSHOT_MARKER).unlink()
        (snapshot / "model.safetensors").unlink()
    os.mkfifo(snapshot / name)
    with pytest.raises(HubError, match="not in the cache"):
        call_with_deadline(lambda: resolve_model(REPO, progress=False, offline=True), 10)
    assert_snapshot_holds(call_with_deadline(lambda: resolve_model(REPO, progress=False), 10), files)
