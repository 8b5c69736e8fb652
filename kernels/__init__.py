"""CUDA kernels (one .cu file per op family) and the CPU emulator that runs them without a GPU.

The .cu files are compiled by NVRTC through CuPy on a GPU (nanollm/backends/cupy_backend.py) and by the host C++
compiler for the CPU emulator (kernels/emulator.py, kernels/cuda_emulator.h, kernels/cuda_emulator.cpp).
`python kernels/build.py --nvcc` (= `make kernels`) checks them with nvcc.
"""
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent  # where the .cu sources and the emulator live
