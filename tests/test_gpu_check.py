"""`make gpu-check` (tests/gpu/), tested without a GPU: everything in it that does not need one.

The runner: its summary table, a stage that hangs (killed with the processes it started, reported, the next stage
still runs), the pass rule (exit status and the stage's own summary line, produced here by the real producers), the
one-line refusal on a machine without a GPU, and that every stage's command exists. The parity stage's code path runs
whole on the CUDA emulator (float32 and float16 weights) and is shown to catch a 1% error. The decode benchmark runs
on the CPU on a tiny model. The Makefile target installs nothing from the network (`make -n`).
"""
import importlib
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanollm.backends.emulator_backend import EmulatorBackend
from nanollm.backends.numpy_backend import NumpyBackend
from tests.bench import bench_kernels
from tests.conftest import PROJECT_ROOT, time_limit
from tests.gpu import check, decode, parity
from tests.hf_models import Options
from tests.kernel_harness import LAUNCH_OPTIONS, assert_close, make_backend

STAGE = {s.name: s for s in check.STAGES}


def python_stage(code: str, timeout_s: float = 30, expect: str = r"done") -> check.Stage:
    return check.Stage("fake", (sys.executable, "-c", code), timeout_s, expect)


# -- the runner -----------------------------------------------------------------------------------------------------


def test_summary_table_has_one_row_per_stage():
    outcomes = [check.Outcome(STAGE["parity"], "pass", 12.4, "8/8 comparisons pass"),
                check.Outcome(STAGE["decode"], "TIMEOUT", 90.2, "killed after 90 s; last line: loading")]
    lines = check.summary(outcomes).splitlines()
    assert lines[0].split() == ["stage", "result", "time", "key", "figures"]
    assert lines[1].split()[:3] == ["parity", "pass", "12s"] and lines[1].endswith("8/8 comparisons pass")
    assert lines[2].split()[:3] == ["decode", "TIMEOUT", "90s"] and lines[2].endswith("last line: loading")


def test_a_stage_that_hangs_is_killed_with_its_children_and_reported(tmp_path):
    """The stage starts a child of its own, then sleeps: after its 1 s both are gone, and its output so far shows."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
            "print('loading', flush=True)\n"
            "time.sleep(60)\n")
    with time_limit(20):
        outcome = check.run_stage(python_stage(code, timeout_s=1), dict(os.environ))
    assert outcome.result == "TIMEOUT" and outcome.seconds < 10
    assert outcome.figures == "killed after 1 s; last line: loading"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:  # init reaps the orphan a moment later
        time.sleep(0.05)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_passes_only_with_exit_status_0_and_its_summary_line():
    env = dict(os.environ)
    assert check.run_stage(python_stage("print('done')"), env).result == "pass"
    wrong_line = check.run_stage(python_stage("print('done'); print('Traceback: oops')"), env)
    assert (wrong_line.result, wrong_line.figures) == ("FAIL", "exit status 0: Traceback: oops")
    failed = check.run_stage(python_stage("import sys; print('done'); sys.exit(3)"), env)
    assert (failed.result, failed.figures) == ("FAIL", "exit status 3: done")


def test_main_runs_every_stage_after_a_failure_and_exits_1(monkeypatch, capsys):
    """The GPU found, three stages: one fails, one hangs, the last still runs; the table lists all three; exit 1."""
    monkeypatch.setattr(check, "missing", lambda: [])
    monkeypatch.setattr(check, "gpu_name", lambda: "Fake GPU")
    stages = (python_stage("import sys; sys.exit(1)"), python_stage("import time; time.sleep(30)", timeout_s=1),
              python_stage("print('done')"))
    monkeypatch.setattr(check, "STAGES", stages)
    assert check.main() == 1
    table = capsys.readouterr().out.split("GPU check summary (Fake GPU")[1].splitlines()[2:]
    assert [row.split()[1] for row in table] == ["FAIL", "TIMEOUT", "pass"]
    monkeypatch.setattr(check, "STAGES", stages[2:])
    assert check.main() == 0


def test_without_a_gpu_it_says_what_is_missing_in_one_line_and_runs_nothing():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here: this machine may have a GPU")
    except ImportError:
        pass
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "tests.gpu.check"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert time.monotonic() - start < 60  # imports only: no stage ran
    assert run.stdout.count("\n") == 1 and run.stdout.startswith("gpu-check: cannot run here: ")
    assert "CuPy is not installed (cupy-cuda13x)" in run.stdout and "Nothing was run." in run.stdout
    assert "==" not in run.stdout  # no stage header


# -- the stages -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", check.STAGES, ids=lambda s: s.name)
def test_each_stage_command_exists_and_imports(stage):
    assert stage.command[:2] == (sys.executable, "-m")
    module = importlib.import_module(stage.command[2])  # pytest, or the stage's own module
    if stage.command[2] != "pytest":
        assert callable(module.main)
    files = [a for a in stage.command if a.endswith(".py")]
    assert all((PROJECT_ROOT / f).is_file() for f in files)
    assert sum(s.timeout_s for s in check.STAGES) < 300  # the whole check within 5 minutes, stages that hang included


def test_kernel_test_files_are_every_file_with_cupy_variants():
    """A new test module parametrized over the kernel backends (or naming CupyBackend as a case) joins the GPU check:
    this list is read from the files, so it cannot fall behind them."""
    uses = re.compile(r"import[^\n]*\bKERNEL_BACKENDS\b|[\"']CupyBackend[\"']|[\"']cupy[\"']")
    found = {f"tests/{p.name}" for p in (PROJECT_ROOT / "tests").glob("test_*.py")
             if p.name != "test_gpu_check.py" and uses.search(p.read_text())}
    assert found == set(check.KERNEL_TEST_FILES)


@pytest.fixture(scope="module")
def pytest_summaries(tmp_path_factory):
    """The last line pytest -q prints, as the kernel-tests stage runs it (-k cupy), for a green run and a run with a
    skip: real output of the pytest installed here."""
    folder = tmp_path_factory.mktemp("pytest_lines")
    (folder / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('be', ['emulator', 'cupy'])\n"
        "def test_a(be): pass\n"
        "@pytest.mark.parametrize('be', ['emulator', 'cupy'])\n"
        "def test_b(be):\n"
        "    if be == 'cupy': pytest.skip('x')\n")
    lines = {}
    for name, k in (("green", "cupy and test_a"), ("skipped", "cupy")):
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", k, "test_x.py"],
                             cwd=folder, capture_output=True, text=True, timeout=60)
        lines[name] = run.stdout.strip().splitlines()[-1]
    return lines


def test_kernel_tests_pass_only_when_none_is_skipped(pytest_summaries):
    expect = STAGE["kernel tests"].expect
    assert re.match(expect, pytest_summaries["green"]), pytest_summaries["green"]  # "1 passed, 3 deselected in ..."
    assert not re.match(expect, pytest_summaries["skipped"]), pytest_summaries["skipped"]
    assert not re.match(expect, "1 failed, 52 passed, 67 deselected in 3.1s")


def test_bench_kernels_summary_line():
    """The last line of `make bench-kernels`: the median kernel's share of the peak and both ends, by hand."""
    line = bench_kernels.summary({"a": 100.0, "b": 2000.0, "c": 4000.0}, peak_gbps=5000.0)
    assert line == "3 kernels: median 40% of peak 5000 GB/s (lowest a 2%, highest c 80%)"
    assert re.match(STAGE["bench-kernels"].expect, line)
    assert bench_kernels.summary({"a": 100.0}, peak_gbps=0.0) == "1 kernels: median 100 GB/s (peak unknown)"


# -- the parity stage -------------------------------------------------------------------------------------------------


def test_relative_error_by_hand():
    """want [2, -4]: scale 4; got [2.1, -4]: |0.1| / (2 + 4) = 1/60. NaN where want has NaN is no error; a NaN where
    want is finite, or a mismatched inf, is an infinite one."""
    want = np.array([2.0, -4.0])
    assert parity.relative_error(want, want) == 0.0
    assert math.isclose(parity.relative_error(np.array([2.1, -4.0]), want), 0.1 / 6)
    assert parity.relative_error(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert parity.relative_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == math.inf
    assert parity.relative_error(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0])) == math.inf
    assert parity.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        parity.relative_error(np.zeros(3), np.zeros(4))


@settings(max_examples=60)
@given(want=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6), elements=st.floats(-1e3, 1e3, width=32)),
       noise=st.floats(1e-7, 1e-1), seed=st.integers(0, 2**32 - 1))
def test_relative_error_is_the_smallest_rtol_assert_close_accepts(want, noise, seed):
    """The stage's error is the number the kernel tests' harness compares with: assert_close passes just above it
    and fails just below it."""
    got = (want + np.random.default_rng(seed).standard_normal(want.shape) * noise).astype(np.float32)
    err = parity.relative_error(got, want)
    if math.isinf(err):  # want is all zeros and got is not: no rtol scales a zero bound
        with pytest.raises(AssertionError):
            assert_close(got, want, 1e6)
        return
    assert_close(got, want, err * (1 + 1e-6) + 1e-300)
    if err > 0:
        with pytest.raises(AssertionError):
            assert_close(got, want, err * (1 - 1e-6))


def test_agreeing_steps_allow_a_difference_only_at_a_near_tie():
    """Steps of logits over 3 tokens, max |logit| 10 and tol 1e-3: a near-tie is a top-two gap <= 4e-2."""
    logits = np.array([[10.0, 0.0, 1.0], [0.0, 10.0, 9.99], [0.0, 10.0, 9.0]])
    want = np.array([0, 1, 1])
    assert parity.agreeing_steps(want, want, logits, 1e-3) == (3, True)
    assert parity.agreeing_steps(np.array([0, 2, 0]), want, logits, 1e-3) == (1, True)  # 2 is 0.01 below 1
    assert parity.agreeing_steps(np.array([0, 1, 2]), want, logits, 1e-3) == (2, False)  # a gap of 1: no tie


class Float16Emulator(EmulatorBackend):
    """The emulator holding matrices in float16 as CupyBackend(weight_dtype=np.float16) does: the parity stage's
    float16 path, run on the CPU."""

    weight_dtype = np.dtype(np.float16)

    def weight(self, a):
        return self.asarray(a, dtype=np.float16 if np.ndim(a) == 2 else np.float32)


TINY = {"gpt2": Options(), "llama": Options(arch="llama", n_kv_head=2, tied=False)}


@pytest.fixture(scope="module")
def emulated_comparisons():
    """The stage's check_case on the emulator (small launches: split decode from 33 keys) on tiny models: 40-token
    prompts and 4 greedy steps, against NumPy and transformers on the CPU."""
    backends = [make_backend("emulator"), Float16Emulator(**LAUNCH_OPTIONS)]
    return [c for case, options in TINY.items() for be in backends
            for c in parity.check_case(case, options, be, prompt_tokens=40, steps=4, device="cpu")]


def test_parity_stage_passes_on_the_emulator(emulated_comparisons, capsys):
    assert {(c.case, c.weights, c.reference) for c in emulated_comparisons} == {
        (case, w, ref) for case in TINY for w in ("float32", "float16") for ref in ("numpy", "transformers")}
    for c in emulated_comparisons:
        assert c.passed, c.row()
        assert c.forward <= parity.TOLERANCES[np.dtype(c.weights)]
    assert parity.report(emulated_comparisons)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("8/8 comparisons pass; float32 worst ") and re.match(STAGE["parity"].expect, last)


class ScaleOffBackend(NumpyBackend):
    """The reference with attention's scale 1% off: the kind of slip a kernel could make."""

    weight_dtype = np.dtype(np.float32)

    def attention(self, q, k, v, q_start, key_mask=None, *, scale=None, softcap=None, window=None):
        scale = 1.01 * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
        return super().attention(q, k, v, q_start, key_mask, scale=scale, softcap=softcap, window=window)


def test_parity_stage_fails_a_one_percent_error(capsys):
    comparisons = parity.check_case("gpt2", TINY["gpt2"], ScaleOffBackend(), prompt_tokens=40, steps=4, device="cpu")
    assert not any(c.passed for c in comparisons)
    assert all(c.forward > 10 * parity.TOLERANCES[np.dtype(np.float32)] for c in comparisons)
    assert not parity.report(comparisons)
    assert not re.match(STAGE["parity"].expect, capsys.readouterr().out.strip().splitlines()[-1])


# -- the decode stage -----------------------------------------------------------------------------------------------


def test_decode_benchmark_runs_on_the_cpu(monkeypatch, capsys):
    """bench() as the GPU runs it, on the CPU: a tiny GPT-2, 4 steps. Both engines timed, one table, the ratio row."""
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setattr(decode, "NEW_TOKENS", 4)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=256, bos_token_id=1, eos_token_id=2)
    ours, theirs = decode.bench("tiny", lambda: GPT2LMHeadModel(config), NumpyBackend(), peak_gbps=0.0, device="cpu")
    assert ours > 0 and theirs > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny (") and "nanollm (numpy)" in out[2] and "transformers" in out[3]
    assert out[4].split()[:2] == ["ratio", "nanollm/hf"]
    line = decode.headline({"tiny": (ours, theirs)})
    assert re.match(STAGE["decode"].expect, line) and f"({ours / theirs:.2f}x)" in line


# -- the Makefile target and its environment ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_n_gpu_check_installs_nothing_from_the_network():
    """Every command `make gpu-check` would run: pip only with --no-index (and no dependencies, no build isolation,
    which would fetch setuptools), no downloader; then the check itself, on the same Python."""
    # Under `make test` this runs inside make: without its variables the inner make prints no "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    run = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=30, env=env)
    assert run.returncode == 0, run.stderr
    commands = run.stdout.splitlines()
    pips = [c for c in commands if "pip" in c.split()]
    assert pips and all({"--no-index", "--no-deps", "--no-build-isolation"} <= set(c.split()) for c in pips)
    assert not any(tool in c.split() for c in commands for tool in ("curl", "wget", "git", "download", "uv"))
    assert commands == [pips[0], "python3 -m tests.gpu.check"] and pips[0].startswith("python3 -m pip install ")
