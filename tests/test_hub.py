"""Hub downloads (weights_tools/hub.py) against a local stand-in for the hub (tests/hub_server.py).

Every file is a few KB of seeded random bytes, so a byte-for-byte comparison with what the server holds is the
reference: a download is right when the cached file equals the served one exactly.
"""
import json
import random
import socket
import sys
import time

import pytest

from tests.hub_server import FakeHub
from weights_tools import hub as hub_module
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


def add_model(server: FakeHub, repo: str = REPO, *, sharded: bool = False) -> dict[str, bytes]:
    """Put a small model on the fake hub. -> its files. No generation_config.json, vocab.json, etc.: those 404."""
    files = {
        "config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}).encode(),
        "tokenizer.json": random_bytes(700, seed=1),  # under the LFS threshold: served directly
        "merges.txt": b"#version: 0.2\nh e\n",
    }
    if sharded:
        files["model-00001-of-00002.safetensors"] = random_bytes(WEIGHTS_BYTES, seed=2)
        files["model-00002-of-00002.safetensors"] = random_bytes(5000, seed=3)
        weight_map = {"wte": "model-00001-of-00002.safetensors", "h.0.w": "model-00002-of-00002.safetensors",
                      "h.1.w": "model-00002-of-00002.safetensors"}
        files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    else:
        files["model.safetensors"] = random_bytes(WEIGHTS_BYTES, seed=4)
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
    """A server that accepts connections but never answers: the request times out (TIMEOUT_SECONDS, here 0.3 s)
    and becomes a HubError instead of hanging."""
    monkeypatch.setattr(hub_module, "TIMEOUT_SECONDS", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads or answers
        monkeypatch.setenv("NANOLLM_HUB_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(HubError, match="cannot reach the hub.*timed out"):
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


def test_model_without_safetensors(hub, tmp_path):
    """A repo with config.json but only pickled weights is refused in one line."""
    hub.add(REPO, "config.json", b"{}")
    hub.add(REPO, "pytorch_model.bin", b"pickle")
    with pytest.raises(HubError, match="no model.safetensors or model.safetensors.index.json"):
        resolve_model(REPO, progress=False)


def test_index_naming_a_path_is_refused(hub, tmp_path):
    """Shard names come from the network and become paths: "../../evil" must not escape the snapshot."""
    hub.add(REPO, "config.json", b"{}")
    hub.add(REPO, "model.safetensors.index.json", json.dumps({"weight_map": {"w": "../../evil"}}).encode())
    with pytest.raises(HubError, match="not a file name"):
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
