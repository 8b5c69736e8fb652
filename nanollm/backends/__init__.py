"""Backends: where each op of the layer API runs.

  numpy     the reference, plain NumPy in float32 (numpy_backend.py): read this one first
  cpu       the numpy backend with its heavy and frequent ops compiled for the CPU (cpu_backend.py): the fast path
  cupy      the same ops as hand-written CUDA kernels on a GPU, through CuPy (cupy_backend.py)
  emulator  the same CUDA kernels run on the CPU by nanollm's emulator of the CUDA execution model

The model code is written once against this API and never asks which backend it has; every backend offers the
same methods with the same parameters (tests/test_backend_api.py). Only the CuPy backend is imported when asked
for: it needs CuPy, an optional dependency; the emulator and the cpu backend need only NumPy (and a C++ compiler at
their first use).
"""
from .cpu_backend import CpuBackend
from .emulator_backend import EmulatorBackend
from .numpy_backend import NumpyBackend

BACKENDS = ("numpy", "cpu", "cupy", "emulator")


def get_backend(backend="numpy"):
    """A backend by name, or the object itself when one is passed."""
    if not isinstance(backend, str):
        return backend
    if backend == "numpy":
        return NumpyBackend()
    if backend == "cpu":
        return CpuBackend()  # compiles its kernel at the first use (then from the cache)
    if backend == "cupy":
        from .cupy_backend import CupyBackend  # CuPy is optional: importing it without CuPy is an ImportError

        return CupyBackend()
    if backend == "emulator":
        return EmulatorBackend()
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
