"""Shared test fixtures.

Real reference files live in ../shared/data beside the project (see ../shared/README.md). Tests that need them skip
with a clear reason when that folder is absent, so a user who has only the project still runs the rest.
"""
import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# transformers and the hub client print progress bars and advice on every save/load; tests read none of it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Hypothesis: no per-example deadline (the first example of a model test pays for building it); CI is derandomized
# so a red build is reproducible, while local runs keep exploring new examples. Tests write nothing into the working
# directory: hypothesis keeps its files (the example database that replays past failures, its constants cache) in
# the user's cache instead of ./.hypothesis; CI keeps no example database.
set_hypothesis_home_dir(Path(os.environ.get("NANOLLM_CACHE", Path.home() / ".cache" / "nanollm")) / "hypothesis")
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("default", deadline=None, suppress_health_check=HEALTH)
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=HEALTH, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_configure(config):
    """NumPy's RuntimeWarnings (overflow, invalid value, divide by zero) fail the test that caused them: in a float32
    engine each one is a value that left float32's range or became NaN, a silently wrong answer in waiting. Code
    that overflows on purpose says so with np.errstate (sampling.apply_temperature).

    Run the reference libraries' torch on one thread for the whole suite. On a 2-core machine where other work
    shares the cores, torch's default of one thread per core made transformers' beam search ~100x slower (measured:
    0.04 s vs 5-8 s for the same 12 generate calls); nanollm's own tests are unaffected (NumPy's BLAS threads)."""
    config.addinivalue_line("filterwarnings", "error::RuntimeWarning")
    # Except "invalid value" from a matrix product: OpenBLAS's kernels can raise the FE_INVALID flag on padding they
    # read and throw away (numpy#24067, OpenBLAS#1924), so the warning comes and goes with memory contents (a CI run
    # failed once on a product of finite float32 values that passed when hypothesis replayed it). A NaN in a product
    # still fails every comparison, and its overflow still raises.
    config.addinivalue_line("filterwarnings", "ignore:invalid value encountered in matmul:RuntimeWarning")
    try:
        import torch
    except ImportError:  # the tests that need torch import it themselves and fail or skip there
        return
    torch.set_num_threads(1)


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the calling test with the reason it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"reference file {path} is not present (../shared/data sits beside the project in CI)")
    return path


@contextmanager
def time_limit(seconds: float):
    """Fail the test if the block runs longer than `seconds`, so a hang fails one test instead of holding the suite.

    SIGALRM interrupts even a blocking open() of a FIFO or a long regex. pytest.fail raises a BaseException, which
    no `except Exception` (nor `except OSError`, which would catch a TimeoutError) in the code under test can take
    for an ordinary error.
    """
    def expire(signum, frame):
        pytest.fail(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


NON_REGULAR = ("fifo", "/dev/zero", "directory", "dangling link", "socket")


def make_non_regular(path: Path, kind: str) -> None:
    """Put at `path` what is not a regular file: a FIFO (open() would wait for a writer), a link to /dev/zero (it
    never ends), a directory, a link to nothing, or a (bound, closed) Unix socket."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to(path.with_name("missing"))
    else:  # a socket's path must be short (108 bytes): bind it relative to its directory
        cwd = os.getcwd()
        os.chdir(path.parent)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(path.name)
        finally:
            os.chdir(cwd)
