"""CUDA kernels (one .cu file per op family), installed as `nanollm.kernels`; the CPU emulator that runs them
without a GPU is the subpackage `nanollm.kernels.emulator` (kernels/emulator/).

The .cu files are compiled by NVRTC through CuPy on a GPU (nanollm/backends/cupy_backend.py) and by the host C++
compiler for the CPU emulator (kernels/emulator/: __init__.py, cuda_emulator.h, cuda_emulator.cpp). The
*_cpu.cpp files (and simd_cpu.h and pool_cpu.h, which they include) are not CUDA: they are the cpu backend's matrix
product, attention, norms, RoPE and activations, plain C++ with a thread pool of their own, compiled by the host
compiler at first use
(nanollm/backends/cpu_backend.py).
`python kernels/build.py --nvcc` (= `make kernels`) checks the .cu files with nvcc.

The folder stays at the top of the repository, beside nanollm/, so the kernels read as a project of their own;
setup.py installs it inside nanollm (package_dir) so that it never takes the generic top-level name `kernels`,
which an unrelated PyPI distribution owns.
"""
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent  # where the .cu sources and common.cuh live
