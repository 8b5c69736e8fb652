"""The emulator backend: the CUDA kernels of `kernels/` run on the CPU, over NumPy arrays.

What this adds over kernel_backend.py: only the choice of module loader. Each .cu file is compiled by the host C++
compiler against kernels/cuda_emulator.h and every CUDA thread runs as a fiber (kernels/emulator.py), so this backend
executes exactly the source the GPU runs: it exists to test the kernels on machines without a GPU, not for speed.
"""
import numpy as np

from kernels.emulator import EmuModule

from .kernel_backend import KernelBackend


class EmulatorBackend(KernelBackend):
    name = "emulator"

    def __init__(self, **launch_options):
        super().__init__(np, lambda path: EmuModule(path=str(path)), **launch_options)
