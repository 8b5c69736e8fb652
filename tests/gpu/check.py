"""`make gpu-check`: everything nanollm checks on a GPU, in one command that ends with one summary table.

Run it on a machine with an NVIDIA GPU and a Python that already holds torch (a CUDA build), CuPy (cupy-cuda13x),
transformers, pytest and hypothesis; nothing is installed from the network (the Makefile installs nanollm from the
checkout into that Python: editable, no index, no dependencies). The stages:

  kernel tests   every CuPy variant of the kernel tests: pytest -k cupy on KERNEL_TEST_FILES
  parity         whole forward passes, CuPy against NumPy and transformers, float32 and float16 weights (parity.py)
  bench-kernels  each kernel's GB/s as a fraction of the GPU's peak (tests/bench/bench_kernels.py, `make bench-kernels`)
  decode         time per token of GPT-2 124M and Qwen2.5-0.5B's shape against transformers on the GPU (decode.py)

Each stage is a child process with its own time limit (the limits add up to under 5 minutes): one that overruns is
killed with every process it started and reported as TIMEOUT, and the next stage runs. A stage passes when it exits
0 and its last line of output reads as that stage's summary (`expect`); that line is its key figures in the table.
The exit status is 0 only when every stage passed. Without a usable GPU the check prints one line saying what is
missing and exits 2 before running anything.
"""
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: every stage runs there
# The test files whose backend fixtures have a "cupy" variant (tests/kernel_harness.KERNEL_BACKENDS, or
# CupyBackend in the API test); tests/test_gpu_check.py checks this list against the files themselves.
KERNEL_TEST_FILES = ("tests/test_kernels.py", "tests/test_backend_forward.py", "tests/test_backend_api.py",
                     "tests/test_speculative.py", "tests/test_paged_attention.py")
# Every stage's environment: no download can be attempted (transformers only ever reads the files the stages
# write); no progress bars; output unbuffered, so a killed stage still shows how far it came; hypothesis
# derandomized (tests/conftest.py's "ci" profile), so a failure found here is found again by the next run.
STAGE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1", "CI": "1"}


@dataclass(frozen=True)
class Stage:
    name: str
    command: tuple  # argv, run in ROOT
    timeout_s: float
    expect: str  # a regex the last line of output must match (re.match) for a pass


@dataclass(frozen=True)
class Outcome:
    stage: Stage
    result: str  # "pass", "FAIL" or "TIMEOUT"
    seconds: float
    figures: str  # the stage's last line of output, or what went wrong


PY = (sys.executable,)
STAGES = (
    Stage("kernel tests", (*PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy", *KERNEL_TEST_FILES),
          90, r"\d+ passed(, \d+ (deselected|warnings?))* in "),  # a skipped or failed test fails the stage
    Stage("parity", (*PY, "-m", "tests.gpu.parity"), 60, r"(\d+)/\1 comparisons pass"),
    Stage("bench-kernels", (*PY, "-m", "tests.bench.bench_kernels"), 45, r"\d+ kernels: "),
    Stage("decode", (*PY, "-m", "tests.gpu.decode"), 90, r"decode ms/token nanollm vs transformers"),
)


def missing() -> list[str]:
    """What this machine lacks for the check, in words (empty when it has everything)."""
    lacks = [f"{name} is not installed" for name in ("transformers", "pytest", "hypothesis")
             if importlib.util.find_spec(name) is None]
    try:
        installed = importlib.util.find_spec("nanollm.kernels") is not None
    except ModuleNotFoundError:  # not even the package nanollm: run from somewhere other than the checkout
        installed = False
    if not installed:
        lacks.append("nanollm is not installed from the checkout (`make gpu-check` installs it)")
    try:
        import cupy
    except ImportError:
        lacks.append("CuPy is not installed (cupy-cuda13x)")
    else:
        try:
            if cupy.cuda.runtime.getDeviceCount() == 0:
                lacks.append("CuPy sees no CUDA GPU")
        except cupy.cuda.runtime.CUDARuntimeError as e:
            lacks.append(f"CuPy sees no CUDA GPU ({e})")
    try:
        import torch
    except ImportError:
        lacks.append("torch is not installed")
    else:
        if not torch.cuda.is_available():
            lacks.append(f"torch {torch.__version__} sees no CUDA GPU (a CPU build, or no driver)")
    return lacks


def gpu_name() -> str:
    """The first GPU's name, asked of the CUDA runtime through CuPy (torch would create a context to answer)."""
    import cupy  # the preflight found it

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def run_stage(stage: Stage, env: dict) -> Outcome:
    """Run one stage, echoing its output as it comes; kill its whole process group when it overruns."""
    print(f"\n== {stage.name} (at most {stage.timeout_s:.0f} s): {' '.join(stage.command[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)  # its own process group
    lines = []
    reader = threading.Thread(target=echo, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=stage.timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and every process it started
        except ProcessLookupError:  # it ended on its own meanwhile
            pass
        proc.wait()
        code = None
    reader.join(timeout=5)  # the pipe closes when the last process holding it is gone
    seconds = time.monotonic() - start
    last = next((line.strip() for line in reversed(lines) if line.strip()), "(no output)")
    if code is None:
        return Outcome(stage, "TIMEOUT", seconds, f"killed after {stage.timeout_s:.0f} s; last line: {last}")
    if code == 0 and re.match(stage.expect, last):
        return Outcome(stage, "pass", seconds, last)
    return Outcome(stage, "FAIL", seconds, f"exit status {code}: {last}")


def echo(stream, lines: list) -> None:
    for line in stream:
        lines.append(line)
        print(line, end="", flush=True)


def summary(outcomes: list[Outcome]) -> str:
    """The table printed at the end: one row per stage."""
    rows = [f"{'stage':<15}{'result':<9}{'time':>7}  key figures"]
    rows += [f"{o.stage.name:<15}{o.result:<9}{o.seconds:>6.0f}s  {o.figures}" for o in outcomes]
    return "\n".join(rows)


def main() -> int:
    lacks = missing()
    if lacks:
        print(f"gpu-check: cannot run here: {'; '.join(lacks)}. Nothing was run.")
        return 2
    env = {**os.environ, **STAGE_ENV}
    gpu = gpu_name()
    print(f"gpu-check on {gpu}, {time.strftime('%Y-%m-%d')}: {len(STAGES)} stages", flush=True)
    outcomes = [run_stage(stage, env) for stage in STAGES]
    print(f"\nGPU check summary ({gpu}, {time.strftime('%Y-%m-%d')})\n{summary(outcomes)}")
    return 0 if all(o.result == "pass" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
