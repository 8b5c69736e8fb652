"""The kernels compile under NVRTC, the compiler CuPy uses on a real GPU, with the options CupyBackend passes.

nvcc (`make kernels`) and the emulator (g++) both accept things NVRTC does not: NVRTC has no host headers, so for
instance the C macro INFINITY is undefined there. Without a GPU this is the closest check of the CuPy path: the
NVRTC library itself (PyPI's nvidia-cuda-nvrtc-cu12, a test dependency) called through ctypes, producing PTX.
"""
import ctypes
import glob
from pathlib import Path

import pytest

from nanollm.kernels import KERNELS_DIR

KERNEL_FILES = sorted(KERNELS_DIR.glob("*.cu"))


def load_nvrtc():
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        pytest.skip("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12, part of nanollm[test])")
    libs = glob.glob(str(Path(list(nvidia.cuda_nvrtc.__path__)[0]) / "lib" / "libnvrtc.so*"))
    if not libs:
        pytest.skip("the nvidia-cuda-nvrtc package holds no libnvrtc.so")
    return ctypes.CDLL(libs[0])


def nvrtc_compile(lib, path: Path, arch: str) -> tuple[int, str]:
    """Compile one .cu to PTX as cupy.RawModule would. -> (nvrtcResult, compiler log)"""
    prog = ctypes.c_void_p()
    source = path.read_bytes()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source, path.name.encode(), 0, None, None) == 0
    options = [f"-I{KERNELS_DIR}".encode(), b"--std=c++17", f"--gpu-architecture={arch}".encode()]
    result = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return result, log.value.decode(errors="replace")


def test_there_are_kernels():
    assert {p.name for p in KERNEL_FILES} >= {"softmax.cu", "attention.cu", "sampling.cu", "norms.cu",
                                              "elementwise.cu", "paged_attention.cu"}


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_under_nvrtc(path, arch):
    result, log = nvrtc_compile(load_nvrtc(), path, arch)
    assert result == 0, f"NVRTC failed on {path.name} for {arch}:\n{log}"


def test_nvrtc_check_catches_a_host_only_macro(tmp_path):
    """The check has teeth: a kernel using an undefined identifier must fail to compile."""
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = NOT_DEFINED_ANYWHERE; }\n')
    result, log = nvrtc_compile(load_nvrtc(), bad, "compute_80")
    assert result != 0 and "NOT_DEFINED_ANYWHERE" in log
