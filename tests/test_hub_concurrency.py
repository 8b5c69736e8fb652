"""Several processes sharing one hub cache (weights_tools/hub.py, "The cache"): real OS processes against the local
fake hub (tests/hub_server.py), the weights sent slowly so that the downloads overlap.

Before the per-file locks, a second process appended to the first one's model.safetensors.part and the cache ended
up corrupt and marked complete. Now one process downloads each file while the others wait for its lock, then find
the verified file. The reference is the served bytes: every cached file must equal them exactly.
"""
import os
import signal
import subprocess
import sys
import time

from tests.conftest import PROJECT_ROOT
from tests.hub_server import FakeHub
from tests.test_hub import REPO, add_model, assert_snapshot_holds, random_bytes, snapshot_dir
from weights_tools.hub import LOCKS_FOLDER

WEIGHTS = random_bytes(40_000, seed=7)
PACE = 20_000  # bytes per second: the weights take 2 s to arrive, long enough for every process to start meanwhile
FETCH = f"from weights_tools.hub import resolve_model; print(resolve_model({REPO!r}))"


def start_fetch(hub: FakeHub, tmp_path) -> subprocess.Popen:
    """`resolve_model(REPO)` in a new Python process, with the cache under tmp_path and progress lines on stderr."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("NANOLLM_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(NANOLLM_CACHE=str(tmp_path / "cache"), NANOLLM_HUB_URL=hub.url, no_proxy="*",
               PYTHONPATH=str(PROJECT_ROOT), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, "-c", FETCH], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.02)


def slow_model(hub: FakeHub) -> dict[str, bytes]:
    files = add_model(hub)
    files["model.safetensors"] = WEIGHTS
    hub.add(REPO, "model.safetensors", WEIGHTS)
    hub.pace["model.safetensors"] = PACE
    return files


def leftovers(cache) -> list[str]:
    """Every file of the cache that is neither a final file, the marker nor a lock file: .part, .tmp, ..."""
    return [str(path) for path in cache.rglob("*") if path.is_file() and
            (path.name.endswith((".part", ".tmp")) or LOCKS_FOLDER not in path.parts and path.name.startswith(".")
             and path.name != ".nanollm-complete.json")]


def test_three_processes_fetch_the_same_model(tmp_path):
    """Three processes started together fetch the same model into one cache. The weights are downloaded once (one
    CDN request): the others wait for the lock, saying so, and then skip the verified file. All three succeed with
    the same snapshot, byte-identical to the served files, and no .part or temporary file remains."""
    with FakeHub() as hub:
        files = slow_model(hub)
        fetches = [start_fetch(hub, tmp_path) for _ in range(3)]
        results = [fetch.communicate(timeout=60) for fetch in fetches]
        assert [fetch.returncode for fetch in fetches] == [0, 0, 0], [err for _, err in results]
        assert {out.strip() for out, _ in results} == {str(snapshot_dir(tmp_path))}
        assert len(hub.requests_for("/cdn/")) == 1
        waiting = [err for _, err in results if "waiting for another process that is downloading model" in err]
        assert len(waiting) == 2
    assert_snapshot_holds(snapshot_dir(tmp_path), files)
    assert leftovers(tmp_path / "cache") == []


def test_a_killed_downloader_leaves_a_part_to_resume(tmp_path):
    """A process killed (SIGKILL) in the middle of the weights: the kernel drops its lock, so the next process is
    not stuck; it resumes the .part from where the first stopped (a Range request) and ends with the exact file."""
    with FakeHub() as hub:
        files = slow_model(hub)
        first = start_fetch(hub, tmp_path)
        part = snapshot_dir(tmp_path) / "model.safetensors.part"
        wait_for(lambda: part.exists() and part.stat().st_size > 0)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        kept = part.stat().st_size
        assert 0 < kept < len(WEIGHTS)
        hub.pace.clear()
        second = start_fetch(hub, tmp_path)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert hub.requests_for("/cdn/")[-1]["Range"] == f"bytes={kept}-"
    assert_snapshot_holds(snapshot_dir(tmp_path), files)
    assert leftovers(tmp_path / "cache") == []
