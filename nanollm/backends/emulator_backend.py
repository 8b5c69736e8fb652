"""The emulator backend: the CUDA kernels of `kernels/` run on the CPU, over NumPy arrays.

What this adds over kernel_backend.py: only the choice of module loader. Each .cu file is compiled by the host C++
compiler against kernels/emulator/cuda_emulator.h and every CUDA thread runs as a fiber (kernels/emulator/, installed
as nanollm.kernels.emulator), so this backend executes exactly the source the GPU runs: it exists to test the
kernels on machines without a GPU, not for speed. It needs only NumPy, and a C++ compiler at the first launch.
"""
import numpy as np

from nanollm.kernels.emulator import EmuModule

from .kernel_backend import KernelBackend


class EmulatorBackend(KernelBackend):
    name = "emulator"

    def __init__(self, **launch_options):
        super().__init__(np, lambda path: EmuModule(path=str(path)), **launch_options)
