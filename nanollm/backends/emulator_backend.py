"""The emulator backend: the CUDA kernels of `kernels/` run on the CPU, over NumPy arrays.

What this adds over kernel_backend.py: only the choice of module loader. Each .cu file is compiled by the host C++
compiler against kernels/cuda_emulator.h and every CUDA thread runs as a fiber (kernels/emulator.py), so this backend
executes exactly the source the GPU runs: it exists to test the kernels on machines without a GPU, not for speed.
"""
import sys

import numpy as np

from .kernel_backend import KERNEL_DIR, KernelBackend


def _emulator_module_class():
    # kernels/ sits beside the nanollm package in the source tree; make it importable from any working directory.
    root = str(KERNEL_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from kernels.emulator import EmuModule

    return EmuModule


class EmulatorBackend(KernelBackend):
    name = "emulator"

    def __init__(self, **launch_options):
        module_class = _emulator_module_class()
        super().__init__(np, lambda path: module_class(path=str(path)), **launch_options)
