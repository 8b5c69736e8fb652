"""Backends: where each op of the layer API runs.

  numpy     the reference, plain NumPy in float32 (numpy_backend.py): read this one first
  cupy      the same ops as hand-written CUDA kernels on a GPU, through CuPy (cupy_backend.py)
  emulator  the same CUDA kernels run on the CPU by nanollm's emulator of the CUDA execution model

The model code (nanollm/model.py) is written once against this API and never asks which backend it has.
"""
from .numpy_backend import NumpyBackend

BACKENDS = ("numpy", "cupy", "emulator")


def get_backend(backend="numpy"):
    """A backend by name, or the object itself when one is passed."""
    if not isinstance(backend, str):
        return backend
    if backend == "numpy":
        return NumpyBackend()
    if backend == "cupy":
        from .cupy_backend import CupyBackend

        return CupyBackend()
    if backend == "emulator":
        from .emulator_backend import EmulatorBackend

        return EmulatorBackend()
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
