"""Run the project's CUDA kernels on the CPU: build a .cu file with the host C++ compiler, then launch its kernels.

This is the Python half of nanollm's emulator of the CUDA execution model; the C++ half sits beside it in
kernels/emulator/: `cuda_emulator.h` (the CUDA built-ins a kernel uses, written for the CPU) and `cuda_emulator.cpp`
(the scheduler that runs every CUDA thread of a block as a fiber). Read them in that order after this file. The
kernels it runs are one folder up, in kernels/; installed, this package is `nanollm.kernels.emulator`.

Building (`EmuModule`):
  1. find every `extern "C" __global__ void name(...)` in the source with a regular expression and parse its
     parameter list (our kernels only take pointers like `const float* x` and scalars like `int n`);
  2. generate one small C++ launcher per kernel, `nanollm_launch_<name>(void** args)`, which unpacks an array of
     pointers to the argument values -- the calling convention of the driver's cuLaunchKernel -- and calls the
     kernel with them;
  3. compile the unmodified source plus the launchers with
     `g++ -O2 -std=c++17 -fPIC -shared -include kernels/emulator/cuda_emulator.h -DNANOLLM_EMULATOR -I kernels/`
     and link them with the scheduler (cuda_emulator.cpp, compiled once to an object file) into a shared library,
     cached under `$NANOLLM_CACHE/emulator` (default `~/.cache/nanollm/emulator`) by the sha256 of everything that
     goes into it (source and the headers it includes, emulator sources, options, compiler version), so a second
     EmuModule of the same source loads the library without compiling.

Launching (`EmuFunction.__call__`, the same shape as `cupy.RawKernel.__call__`): check the grid, block, shared
memory and every argument against the kernel's parsed signature in Python, where a mistake gives a clear
exception, then call `nanollm_emu_launch` in the library through ctypes. NumPy arrays are passed by pointer, so
the kernel's writes land in the caller's arrays.

    mod = EmuModule(path="kernels/elementwise.cu")
    kern = mod.get_function("residual_add")        # residual_add(const float* x, const float* y, float* out, long long n)
    kern((4,), (256,), (x, y, out, np.int64(x.size)))

Sources: CUDA C++ Programming Guide (execution model, warp shuffle functions, launch limits for compute capability
8.x/9.x); CUDA Driver API, cuLaunchKernel (the `void** kernelParams` convention); CuPy RawKernel (the call shape).
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import KERNELS_DIR

EMULATOR_DIR = Path(__file__).resolve().parent  # the C++ half: cuda_emulator.h and cuda_emulator.cpp
HEADER = EMULATOR_DIR / "cuda_emulator.h"
RUNTIME = EMULATOR_DIR / "cuda_emulator.cpp"

# Bump when the generated code or the cache layout changes, so old cache entries are not reused.
BUILD_FORMAT = 1

# CUDA's limits for compute capability 8.x and 9.x (Programming Guide, "Technical Specifications").
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_MAX_SHARED_BYTES = 48 * 1024  # without the opt-in attribute, static + dynamic shared memory per block

# Error codes returned by nanollm_emu_launch (see cuda_emulator.cpp).
_DEADLOCK, _MISUSE, _OUT_OF_MEMORY = 1, 2, 3


class EmulatorError(RuntimeError):
    """A kernel could not be built or launched, or misused a CUDA built-in while running."""


class DeadlockError(EmulatorError):
    """No thread of a block can make progress: e.g. some threads wait at a __syncthreads the others skipped."""


class CompilerNotFound(EmulatorError):
    """There is no host C++ compiler to build kernels with."""


# C parameter types our kernels use -> the NumPy dtype an argument (array element or scalar) must have.
# `void*` takes an array of any dtype. There is no __half: pass float16 data as `unsigned short*` raw bits.
C_TYPES = {
    "float": np.float32, "double": np.float64,
    "int": np.int32, "int32_t": np.int32, "signed": np.int32,
    "unsigned": np.uint32, "unsigned int": np.uint32, "uint32_t": np.uint32,
    "long long": np.int64, "long long int": np.int64, "int64_t": np.int64,
    "unsigned long long": np.uint64, "unsigned long long int": np.uint64, "uint64_t": np.uint64, "size_t": np.uint64,
    "short": np.int16, "int16_t": np.int16, "unsigned short": np.uint16, "uint16_t": np.uint16,
    "char": np.int8, "signed char": np.int8, "int8_t": np.int8, "unsigned char": np.uint8, "uint8_t": np.uint8,
    "bool": np.bool_,
    "void": None,
}  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One kernel parameter, e.g. `const float* __restrict__ x` -> Param("x", "float", is_pointer=True, ...)."""

    name: str
    c_type: str  # the base type without qualifiers: "float", "unsigned", "long long"
    is_pointer: bool
    is_const: bool  # for a pointer: the kernel promises not to write through it
    declaration: str  # the text as written, used in the generated launcher

    @property
    def dtype(self):
        return C_TYPES[self.c_type]


# ---------------------------------------------------------------------------------------------------------------
# Reading kernel signatures


def strip_comments(source: str) -> str:
    """The source with // and /* */ comments blanked, so commented-out kernels are not found."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group()), source, flags=re.S)


_KERNEL = re.compile(
    r'(?P<extern>extern\s+"C"\s+)?__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>\w+)\s*\((?P<params>[^)]*)\)\s*(?P<end>[{;])"
)


def parse_param(text: str, kernel: str) -> Param:
    """`const float* __restrict__ x` -> Param(name="x", c_type="float", is_pointer=True, is_const=True)."""
    declaration = " ".join(text.split())
    match = re.fullmatch(r"(?P<type>.*?[\s*&])(?P<name>\w+)", declaration)
    if match is None:
        raise EmulatorError(f"kernel {kernel}: cannot read parameter {declaration!r}")
    type_text = match.group("type")
    stars = type_text.count("*")
    if stars > 1 or "&" in type_text or "[" in declaration:
        raise EmulatorError(f"kernel {kernel}: parameter {declaration!r} is not a scalar or a plain pointer")
    words = re.findall(r"\w+", type_text)
    is_const = "const" in type_text.split("*")[0].split()
    base = " ".join(w for w in words if w not in ("const", "volatile", "__restrict__", "__restrict", "restrict"))
    if base not in C_TYPES or (base == "void" and stars == 0):
        raise EmulatorError(f"kernel {kernel}: parameter {declaration!r} has type {base!r}, which the emulator "
                            f"cannot pass (known: {', '.join(sorted(C_TYPES))})")
    return Param(match.group("name"), base, stars == 1, is_const, declaration)


def find_kernels(source: str) -> dict:
    """{kernel name: [Param, ...]} for every `__global__` function defined in `source`, in source order."""
    kernels = {}
    for match in _KERNEL.finditer(strip_comments(source)):
        name = match.group("name")
        if match.group("end") == ";":
            continue  # a declaration; the definition comes elsewhere
        if match.group("extern") is None:
            raise EmulatorError(f'kernel {name} must be declared extern "C" __global__ so both CuPy and the '
                                f"emulator can find it by its plain name")
        text = match.group("params").strip()
        params = [] if text in ("", "void") else [parse_param(p, name) for p in text.split(",")]
        kernels[name] = params
    return kernels


def launcher_source(kernels: dict) -> str:
    """C++ for one `nanollm_launch_<name>(void** args)` per kernel: args[i] points at the i-th argument's value."""
    lines = ["// Generated by nanollm.kernels.emulator: unpack cuLaunchKernel-style arguments and call each kernel."]
    for name, params in kernels.items():
        unpacked = []
        for i, p in enumerate(params):
            c_type = ("const " if p.is_const else "") + p.c_type + ("*" if p.is_pointer else "")
            unpacked.append(f"*static_cast<{c_type}*>(args[{i}])")
        lines.append(f'extern "C" void nanollm_launch_{name}(void** args) {{ {name}({", ".join(unpacked)}); }}')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Building and caching


def find_compiler() -> str:
    """The host C++ compiler: $CXX if set, else the first of g++, c++, clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise CompilerNotFound(
        f"no C++ compiler found (looked for {', '.join(candidates)}): the emulator builds CUDA kernels with the "
        f"host compiler. Install one (e.g. `apt install g++`, or Xcode's command line tools) or set CXX."
    )


@lru_cache(maxsize=None)
def compiler_version(compiler: str) -> str:
    """The first line of `compiler --version`, part of the cache key (a new compiler means a new build)."""
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    output = (result.stdout or result.stderr).strip()
    return output.splitlines()[0] if output else compiler


def cache_root() -> Path:
    """Where built kernels are kept, a folder per builder: $NANOLLM_CACHE, default ~/.cache/nanollm (the cpu backend's
    library goes beside the emulator's, in cpu/)."""
    return Path(os.environ.get("NANOLLM_CACHE", Path.home() / ".cache" / "nanollm"))


def default_cache_dir() -> Path:
    return cache_root() / "emulator"


def local_includes(source: str, search_dirs: list) -> list:
    """Text of every `#include "file"` reachable from `source` through the search dirs (for the cache key)."""
    found, texts, pending = set(), [], [source]
    while pending:
        text = pending.pop()
        for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', text, flags=re.M):
            for directory in search_dirs:
                path = (Path(directory) / name).resolve()
                if path.is_file():
                    if path not in found:
                        found.add(path)
                        texts.append(path.read_text())
                        pending.append(texts[-1])
                    break
    return texts


def static_shared_bytes(library: Path, kernel_names) -> dict:
    """{kernel: bytes of static __shared__ memory}, read from the library's thread-local symbols with `nm`.

    `__shared__` variables are `static thread_local` (see cuda_emulator.h), so each is a symbol in the .tbss/.tdata
    section. A variable declared inside kernel K has a name starting `_ZZ<len>K` and counts for K only; one declared
    in a helper function or at file scope counts for every kernel of the file (an overestimate, never an under-).
    Returns zeros when `nm` is missing or cannot read the format (e.g. on macOS).
    """
    sizes = dict.fromkeys(kernel_names, 0)
    nm = shutil.which("nm")
    if nm is None:
        return sizes
    result = subprocess.run([nm, "-S", "--defined-only", "--format=sysv", str(library)], capture_output=True,
                            text=True)
    shared_by_all = 0
    for line in result.stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 7 or fields[6] not in (".tbss", ".tdata") or not fields[4]:
            continue
        if "nanollm_emu" in fields[0] or fields[0].startswith("__"):
            continue  # the scheduler's own thread-locals, and compiler internals like __tls_guard
        size = int(fields[4], 16)
        owner = re.match(r"_ZZ(\d+)", fields[0])
        kernel = fields[0][len(owner.group()):][: int(owner.group(1))] if owner else None
        if kernel in sizes:
            sizes[kernel] += size
        else:
            shared_by_all += size
    return {name: size + shared_by_all for name, size in sizes.items()}


COMPILE_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-Wno-unknown-pragmas", "-DNANOLLM_EMULATOR")


def build_digest(**parts) -> str:
    """A short sha256 of everything that determines a build's output (JSON-able parts), for the cached file's name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _run_compiler(command: list, what: str):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EmulatorError(f"compiling {what} for the emulator failed:\n{' '.join(command)}\n"
                            f"{result.stderr}{result.stdout}")


def runtime_object(compiler: str, options, cache_dir: Path) -> Path:
    """cuda_emulator.cpp compiled once to an object file and cached, so each kernel file only compiles itself."""
    digest = build_digest(format=BUILD_FORMAT, header=HEADER.read_text(), runtime=RUNTIME.read_text(),
                     options=list(options), compiler=[compiler, compiler_version(compiler)])  # fmt: skip
    target = cache_dir / f"cuda_emulator-{digest}.o"
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="build-") as tmp:
            temporary = Path(tmp) / "cuda_emulator.o"
            _run_compiler([compiler, *COMPILE_FLAGS, *options, "-c", str(RUNTIME), "-o", str(temporary)],
                          "the emulator runtime")  # fmt: skip
            os.replace(temporary, target)
    return target


def build(source: str, name: str, source_path, options, cache_dir: Path, kernels: dict):
    """Compile `source` plus its launchers, linked with the emulator runtime, into a cached shared library.

    Returns (library path, manifest dict, whether the compiler ran).
    """
    compiler = find_compiler()
    include_dirs = [KERNELS_DIR] + ([Path(source_path).resolve().parent] if source_path else [])
    digest = build_digest(format=BUILD_FORMAT, source=source, includes=local_includes(source, include_dirs),
                     header=HEADER.read_text(), runtime=RUNTIME.read_text(), options=list(options),
                     compiler=[compiler, compiler_version(compiler)])  # fmt: skip
    library = cache_dir / f"{name}-{digest}.so"
    manifest_path = cache_dir / f"{name}-{digest}.json"
    if library.is_file() and manifest_path.is_file():
        return library, json.loads(manifest_path.read_text()), False

    runtime = runtime_object(compiler, options, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="build-") as tmp:
        tmp = Path(tmp)
        if source_path is None:
            source_path = tmp / f"{name}.cu"
            source_path.write_text(source)
        wrapper = tmp / "module.cpp"
        # Include the source by path so the compiler's messages point at the real file and line.
        wrapper.write_text(f'#include "{Path(source_path).resolve()}"\n\n' + launcher_source(kernels))
        _run_compiler([compiler, *COMPILE_FLAGS, "-shared", "-include", str(HEADER), "-I", str(KERNELS_DIR),
                       *options, str(wrapper), str(runtime), "-o", str(tmp / "module.so")], name)  # fmt: skip
        manifest = {"kernels": {k: [p.declaration for p in ps] for k, ps in kernels.items()},
                    "static_shared_bytes": static_shared_bytes(tmp / "module.so", kernels)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        # Atomic publication: a reader sees either no entry or a whole one, even with concurrent builds.
        os.replace(tmp / "module.so", library)
        os.replace(tmp / "manifest.json", manifest_path)
    return library, manifest, True


# ---------------------------------------------------------------------------------------------------------------
# Modules and kernels


class EmuModule:
    """A .cu file built for the emulator: the CPU counterpart of `cupy.RawModule`.

    Give either `path` (a .cu file) or `code` (source text, with `name` used for the cache entry and messages).
    `options` are extra compiler flags (e.g. "-DNANOLLM_EMU_UCONTEXT"); `max_shared_bytes` is the per-block limit
    on static + dynamic shared memory; `stack_bytes` the stack of each emulated thread (raise it for kernels with
    large local arrays: an overflow hits a guard page and crashes).

    Attributes: `kernels` ({name: [Param]}), `library_path` (the cached .so), `compiled` (False when the build came
    from the cache).
    """

    def __init__(self, path=None, code=None, name=None, options=(), cache_dir=None,
                 max_shared_bytes=DEFAULT_MAX_SHARED_BYTES, stack_bytes=64 * 1024):  # fmt: skip
        if (path is None) == (code is None):
            raise ValueError("give exactly one of path= (a .cu file) or code= (CUDA source text)")
        if path is not None:
            path = Path(path)
            code = path.read_text()
            name = name or path.stem
        name = re.sub(r"\W", "_", name or "module")
        if re.search(r"^(?!\s*#).*\bextern\s+__shared__", strip_comments(code), flags=re.M):  # not in a #define
            raise EmulatorError(f"{name}: declare dynamic shared memory with NANOLLM_DYNAMIC_SHARED(type, name) "
                                f"inside the kernel, not `extern __shared__`: the emulator cannot give a global "
                                f"array a size chosen at launch")
        self.name = name
        self.path = path
        self.max_shared_bytes = int(max_shared_bytes)
        self.stack_bytes = int(stack_bytes)
        self.kernels = find_kernels(code)
        self.library_path, manifest, self.compiled = build(
            code, name, path, tuple(options), Path(cache_dir) if cache_dir else default_cache_dir(), self.kernels
        )
        self._static_shared = manifest["static_shared_bytes"]
        self._library = ctypes.CDLL(str(self.library_path))
        launch = self._library.nanollm_emu_launch
        launch.restype = ctypes.c_int
        launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_ulonglong]
        self._launch = launch
        self._functions = {}

    def get_function(self, name: str) -> "EmuFunction":
        """The kernel `name`, ready to launch; EmulatorError if the source defines no such __global__ function."""
        if name not in self.kernels:
            raise EmulatorError(f"{self.name} has no kernel {name!r}; its kernels are: "
                                f"{', '.join(self.kernels) or '(none)'}")
        if name not in self._functions:  # one object per kernel, so attributes set on it persist
            entry = getattr(self._library, f"nanollm_launch_{name}")
            self._functions[name] = EmuFunction(self, name, self.kernels[name], entry, self._static_shared[name])
        return self._functions[name]

    def __repr__(self):
        return f"EmuModule({self.name!r}, kernels={list(self.kernels)})"


def _dims(value, what: str, limits) -> tuple:
    """An int or a tuple of 1-3 ints -> (x, y, z), checked against CUDA's limits."""
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise EmulatorError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, d, limit in zip("xyz", dims, limits):
        if not 1 <= d <= limit:
            raise EmulatorError(f"{what}.{axis} = {d} is outside CUDA's range 1..{limit}")
    return dims


class EmuFunction:
    """One kernel of an EmuModule; call it like `cupy.RawKernel`: kern(grid, block, args, shared_mem=0)."""

    def __init__(self, module, name, params, entry, static_shared_bytes):
        self.module = module
        self.name = name
        self.params = params
        self._entry = entry
        self.static_shared_bytes = static_shared_bytes
        # Like CUDA's cudaFuncAttributeMaxDynamicSharedMemorySize (CuPy: kern.max_dynamic_shared_size_bytes):
        # None means the module's static + dynamic limit applies.
        self.max_dynamic_shared_size_bytes = None

    def __repr__(self):
        return f"EmuFunction({self.name}({', '.join(p.declaration for p in self.params)}))"

    def _argument(self, param: Param, value):
        """A NumPy buffer holding what args[i] must point at: the array's address, or the scalar's value."""
        where = f"kernel {self.name}, parameter {param.declaration!r}"
        if param.is_pointer:
            if value is None:
                return np.zeros(1, dtype=np.uintp)  # a null pointer
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where}: expected a NumPy array, got {type(value).__name__}")
            if param.dtype is not None and value.dtype != param.dtype:
                raise TypeError(f"{where}: expected an array of {np.dtype(param.dtype)}, got {value.dtype}")
            if not value.flags.c_contiguous:
                raise TypeError(f"{where}: the array must be C-contiguous (use np.ascontiguousarray)")
            if not param.is_const and not value.flags.writeable:
                raise TypeError(f"{where}: the kernel may write through this pointer but the array is read-only")
            return np.array([value.ctypes.data], dtype=np.uintp)
        if not isinstance(value, np.generic) or value.dtype != param.dtype:
            got = f"{type(value).__name__} {value.dtype}" if isinstance(value, np.generic) else type(value).__name__
            raise TypeError(f"{where}: expected a NumPy scalar of dtype {np.dtype(param.dtype)} "
                            f"(e.g. np.{np.dtype(param.dtype).name}(...)), got {got}")
        return np.array([value], dtype=param.dtype)

    def __call__(self, grid, block, args, shared_mem=0):
        grid = _dims(grid, "grid", MAX_GRID_DIM)
        block = _dims(block, "block", MAX_BLOCK_DIM)
        threads = block[0] * block[1] * block[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise EmulatorError(f"block {block} has {threads} threads; CUDA allows at most {MAX_THREADS_PER_BLOCK}")
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise EmulatorError(f"shared_mem must be a non-negative number of bytes, got {shared_mem!r}")
        shared_mem = int(shared_mem)
        if self.max_dynamic_shared_size_bytes is None:
            limit, total = self.module.max_shared_bytes, self.static_shared_bytes + shared_mem
            if total > limit:
                raise EmulatorError(f"kernel {self.name} needs {self.static_shared_bytes} bytes of static + "
                                    f"{shared_mem} bytes of dynamic shared memory = {total} > the limit of {limit}")
        elif shared_mem > self.max_dynamic_shared_size_bytes:
            raise EmulatorError(f"kernel {self.name}: {shared_mem} bytes of dynamic shared memory > "
                                f"max_dynamic_shared_size_bytes = {self.max_dynamic_shared_size_bytes}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise EmulatorError(f"kernel {self.name} takes {len(self.params)} arguments "
                                f"({', '.join(p.declaration for p in self.params)}), got {len(args)}")

        values = [self._argument(p, a) for p, a in zip(self.params, args)]  # kept alive during the launch
        pointers = np.array([v.ctypes.data for v in values] or [0], dtype=np.uintp)  # void* args[]
        grid_array = np.array(grid, dtype=np.uint32)
        block_array = np.array(block, dtype=np.uint32)
        message = ctypes.create_string_buffer(1024)
        code = self.module._launch(
            self._entry, pointers.ctypes.data, self.name.encode(), grid_array.ctypes.data, block_array.ctypes.data,
            shared_mem, self.module.stack_bytes, message, len(message),
        )  # fmt: skip
        if code != 0:
            text = message.value.decode(errors="replace")
            raise (DeadlockError if code == _DEADLOCK else EmulatorError)(text)
