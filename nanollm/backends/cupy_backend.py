"""The CuPy backend: the CUDA kernels of `kernels/` on a GPU, with cuBLAS for the matrix multiplications.

What this adds over kernel_backend.py: the GPU side of moving data, and where precision is chosen.
  * Weight matrices live on the GPU in float16 (half the memory and bandwidth of float32); products accumulate
    in float32 inside cuBLAS. Vectors (norm weights, biases) and every activation stay float32.
    The model uploads its weights through `weight` (matrices go to `weight_dtype`) and everything else through
    `asarray` (float32). Pass weight_dtype=np.float32 for closely comparable runs against the NumPy reference.
  * Each .cu file is compiled at first use by NVRTC (cupy.RawModule) with kernels/ (installed as nanollm.kernels)
    on the include path.
Importing this module without CuPy, or constructing the backend without a visible GPU, raises an ImportError /
RuntimeError that says which.
"""
import numpy as np

from nanollm.kernels import KERNELS_DIR

from .kernel_backend import KernelBackend

try:
    import cupy
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError(
        "the 'cupy' backend needs CuPy and a CUDA GPU: pip install cupy-cuda13x (or nanollm[gpu])"
    ) from e


def gpu_count() -> int:
    """How many CUDA devices CuPy can see (0 when the driver or the device is missing)."""
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        return 0


def _load_module(path):
    return cupy.RawModule(code=path.read_text(), options=("-I" + str(KERNELS_DIR), "--std=c++17"))


class CupyBackend(KernelBackend):
    name = "cupy"

    def __init__(self, weight_dtype=np.float16, **launch_options):
        if gpu_count() == 0:
            raise RuntimeError("the 'cupy' backend needs a CUDA GPU, and CuPy sees none")
        super().__init__(cupy, _load_module, **launch_options)
        self.weight_dtype = np.dtype(weight_dtype)

    def weight(self, a):
        """Matrices in weight_dtype (float16 by default); vectors (norm weights, biases) stay float32."""
        return self.asarray(a, dtype=self.weight_dtype if np.ndim(a) == 2 else np.float32)

    def to_numpy(self, a) -> np.ndarray:
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)
