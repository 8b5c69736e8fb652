"""One harness for every kernel test: which backends run the kernels here, and how a result is compared.

Backends: "emulator" (the CUDA kernels compiled by g++ and run on the CPU; always expected to work where a C++
compiler exists) and "cupy" (the same kernels on a GPU; skipped with the reason when CuPy or a GPU is missing).

Comparison (llm.c's rule, scaled to the data): |got - want| <= rtol * |want| + rtol * max|want|. The second term is
the absolute floor for elements that cancel to near zero (a LayerNorm output near the mean, GELU of a negative
number), where relative error says nothing. On failure it prints the first values and the largest difference.

Tolerances, by the dtype a kernel reads and what it computes:
  float32 or float16 table, gather (embedding)  exact (np.array_equal): the same rows times the same float32 scale
  float32 elementwise, softmax, norms           FLOAT32_RTOL = 1e-5: CUDA's expf and tanhf are within 2 ulp of the
                                                correctly rounded value, and nvcc may fuse a multiply-add that NumPy
                                                rounds twice
  float32 attention                             ATTENTION_RTOL = 1e-4: the scores are summed in another order than
                                                BLAS sums them, and exp turns a score's absolute error into a
                                                relative error of its weight; the tests reach |score| ~ 1e3 (peaked
                                                queries at scale 1, hs = 256) and it still holds there
"""
import numpy as np
import pytest

from nanollm.backends.emulator_backend import EmulatorBackend
from nanollm.kernels.emulator import CompilerNotFound

# Small launch settings make the emulator exercise the split paths with small shapes: 2 warps per attention block
# (rows wrap across blocks and heads) and 32-key decode chunks (split decode from S = 33 up).
LAUNCH_OPTIONS = dict(attention_warps=2, decode_chunk=32)
FLOAT32_RTOL = 1e-5
ATTENTION_RTOL = 1e-4


def make_backend(name: str, **options):
    """A kernel backend by name, or pytest.skip with the reason it cannot run on this machine."""
    options = {**LAUNCH_OPTIONS, **options}
    if name == "emulator":
        try:
            backend = EmulatorBackend(**options)
            one = backend.asarray(np.ones(1))
            backend.add(one, one)  # compile one file now: a missing g++ shows here
        except CompilerNotFound as e:
            pytest.skip(f"the CUDA emulator needs a C++ compiler: {e}")
        return backend
    if name == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError:
            pytest.skip("cupy is not installed, so the kernels cannot run on a GPU here (pip install nanollm[gpu])")
        from nanollm.backends.cupy_backend import CupyBackend, gpu_count

        if gpu_count() == 0:
            pytest.skip("CuPy is installed but sees no CUDA GPU")
        return CupyBackend(weight_dtype=np.float32, **options)
    raise ValueError(name)


KERNEL_BACKENDS = ("emulator", "cupy")


def assert_close(got, want, rtol: float, what: str = "", atol: float = 0.0):
    """Elementwise |got - want| <= rtol * (|want| + max|want|) + atol; NaN must match NaN, inf must match inf.

    atol is for ops whose formula itself cancels (see the GELU test), where the error scales with the input.
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference {want.shape}")
    finite = np.isfinite(want)
    scale = np.abs(want[finite]).max() if finite.any() else 0.0
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(got - want), 0.0)
        bad = (diff > rtol * (np.abs(want) + scale) + atol) | (finite & ~np.isfinite(got))
        bad |= ~finite & ~((got == want) | (np.isnan(got) & np.isnan(want)))
    if bad.any():
        first = np.argwhere(bad)[0]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values differ beyond rtol={rtol} (max |diff| "
            f"{np.nanmax(np.where(finite, diff, 0.0)):.3g}, scale {scale:.3g}); first at {tuple(first)}: "
            f"got {got[tuple(first)]!r}, want {want[tuple(first)]!r}\n"
            f"  got  {got.ravel()[:6]}\n  want {want.ravel()[:6]}"
        )
