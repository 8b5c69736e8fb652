"""The kernels compile under NVRTC 13, the compiler of cupy-cuda13x on the GPU machines, with CuPy's own options.

nvcc (`make kernels`) and the emulator (g++) both accept things NVRTC does not: NVRTC has no host headers, so for
instance the C macro INFINITY is undefined there. Without a GPU this is the closest check of the CuPy path: the
NVRTC library itself (PyPI's nvidia-cuda-nvrtc 13.x, a test dependency) called through ctypes.
"""
import ctypes
from pathlib import Path

import pytest

from nanollm.kernels import KERNELS_DIR

KERNEL_FILES = sorted(KERNELS_DIR.glob("*.cu"))
INSTALL_HINT = 'pip install "nvidia-cuda-nvrtc>=13,<14", part of nanollm[test]'


def find_nvrtc() -> tuple[ctypes.CDLL | None, str]:
    """-> (libnvrtc, "13.x"), or (None, why not). Runs at import: the version goes into the test ids.

    The CUDA 13 wheel puts its libraries in nvidia/cu13/lib. libnvrtc opens its builtins library
    (libnvrtc-builtins.so.13.<minor>) only at the first compile; loading it first, globally, makes a missing one a skip
    here instead of NVRTC_ERROR_BUILTIN_OPERATION_FAILURE in every test."""
    try:
        import nvidia.cu13
    except ImportError:
        return None, f"NVRTC 13 is not installed ({INSTALL_HINT})"
    lib_dir = Path(next(iter(nvidia.cu13.__path__))) / "lib"
    nvrtc, builtins = lib_dir / "libnvrtc.so.13", sorted(lib_dir.glob("libnvrtc-builtins.so.13*"))
    if not nvrtc.is_file() or not builtins:
        return None, f"{lib_dir} lacks libnvrtc.so.13 or libnvrtc-builtins.so.13.* ({INSTALL_HINT})"
    ctypes.CDLL(str(builtins[0]), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(nvrtc))
    major, minor = ctypes.c_int(), ctypes.c_int()
    assert lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) == 0
    return lib, f"{major.value}.{minor.value}"


NVRTC, NVRTC_VERSION = find_nvrtc()


def cupy_options(arch: str) -> list[str]:
    """What cupy.RawModule hands NVRTC for CupyBackend, in CuPy's order (cupy/cuda/compiler.py): CupyBackend's own
    options, then -ftz=true (_compile_with_cache_cuda), -arch=sm_XX (_get_arch_for_options_for_nvrtc: SASS, unless
    CUPY_COMPILE_WITH_PTX asks for compute_XX, a subset of this compile) and --device-as-default-execution-space."""
    return [f"-I{KERNELS_DIR}", "--std=c++17", "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space"]


def nvrtc_compile(path: Path, arch: str) -> tuple[int, int, str]:
    """Compile one .cu as cupy.RawModule would. -> (nvrtcResult, bytes of CUBIN produced, compiler log)"""
    if NVRTC is None:
        pytest.skip(NVRTC_VERSION)
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), path.read_bytes(), path.name.encode(), 0, None, None) == 0
    options = [o.encode() for o in cupy_options(arch)]
    result = NVRTC.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    cubin, size = ctypes.c_size_t(), ctypes.c_size_t()
    NVRTC.nvrtcGetCUBINSize(prog, ctypes.byref(cubin))
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
    return result, cubin.value, log.value.decode(errors="replace")


def test_there_are_kernels():
    assert {p.name for p in KERNEL_FILES} >= {"softmax.cu", "attention.cu", "sampling.cu", "norms.cu",
                                              "elementwise.cu", "paged_attention.cu"}


def test_nvrtc_is_the_cuda_13_one_cupy_cuda13x_uses():
    if NVRTC is None:
        pytest.skip(NVRTC_VERSION)
    print(f"NVRTC {NVRTC_VERSION}")
    assert NVRTC_VERSION.startswith("13.")


# sm_80: A100; sm_90: H100/H200, the GPU machines. The NVRTC version is in each id ("sm_90-nvrtc13.5").
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"], ids=lambda a: f"{a}-nvrtc{NVRTC_VERSION if NVRTC else 'absent'}")
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_under_nvrtc(path, arch):
    result, cubin_bytes, log = nvrtc_compile(path, arch)
    assert result == 0, f"NVRTC {NVRTC_VERSION} failed on {path.name} for {arch}:\n{log}"
    assert cubin_bytes > 0


def test_nvrtc_check_catches_a_host_only_macro(tmp_path):
    """The check has teeth: a kernel using an undefined identifier must fail to compile."""
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = NOT_DEFINED_ANYWHERE; }\n')
    result, _, log = nvrtc_compile(bad, "sm_80")
    assert result != 0 and "NOT_DEFINED_ANYWHERE" in log
