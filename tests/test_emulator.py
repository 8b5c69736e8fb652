"""The CPU emulator of the CUDA execution model (kernels/emulator/: __init__.py, cuda_emulator.h, cuda_emulator.cpp).

Each test launches a small kernel from tests/emulator_kernels/semantics.cu and compares what it wrote with a NumPy
expectation derived from the CUDA Programming Guide's definition of the built-in it exercises (barriers, the four
shuffles with their width argument, votes, atomics, launch limits). The last tests cover kernels/build.py, the nvcc
resource check.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.kernels.build import parse_ptxas
from nanollm.kernels.emulator import (
    CompilerNotFound,
    DeadlockError,
    EmulatorError,
    EmuModule,
    find_compiler,
    find_kernels,
    parse_param,
)

ROOT = Path(__file__).resolve().parents[1]
SEMANTICS = Path(__file__).parent / "emulator_kernels" / "semantics.cu"
FULL = 0xFFFFFFFF


def _have_compiler():
    try:
        find_compiler()
        return True
    except CompilerNotFound:
        return False


needs_compiler = pytest.mark.skipif(not _have_compiler(), reason="the emulator needs a host C++ compiler")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emulator-cache")


@pytest.fixture(scope="module")
def mod(cache_dir):
    if not _have_compiler():
        pytest.skip("the emulator needs a host C++ compiler")
    return EmuModule(path=SEMANTICS, cache_dir=cache_dir)


# ---- barriers and shared memory --------------------------------------------------------------------------------


@settings(max_examples=15)
@given(threads=st.integers(1, 1024), blocks=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_block_reverse_sees_other_threads_writes_after_syncthreads(mod, threads, blocks, seed):
    """Each thread writes x[t] to shared memory and, after __syncthreads, reads the slot of thread blockDim-1-t.

    Without a working barrier a thread would read its partner's slot before the partner wrote it.
    """
    x = np.random.default_rng(seed).standard_normal(blocks * threads).astype(np.float32)
    out = np.zeros_like(x)
    mod.get_function("block_reverse")((blocks,), (threads,), (x, out))
    np.testing.assert_array_equal(out, x.reshape(blocks, threads)[:, ::-1].ravel())


@settings(max_examples=10)
@given(log_threads=st.integers(0, 10), blocks=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_tree_reduction_sums_each_block_exactly(mod, log_threads, blocks, seed):
    """A shared-memory tree reduction (log2(blockDim) rounds, a barrier after each) gives the exact int sum."""
    threads = 2**log_threads
    x = np.random.default_rng(seed).integers(-1000, 1000, blocks * threads, dtype=np.int32)
    sums = np.zeros(blocks, np.int32)
    mod.get_function("tree_sum")(blocks, threads, (x, sums))
    np.testing.assert_array_equal(sums, x.reshape(blocks, threads).sum(axis=1))


def test_static_shared_memory_is_private_to_each_block(mod):
    """Every block fills its `__shared__ int owner[]` with its own blockIdx.x, then counts the entries that hold it.

    If blocks shared one array, a block would see another block's id and count fewer than blockDim.x.
    """
    blocks, threads = 6, 64
    matches = np.zeros(blocks * threads, np.int32)
    mod.get_function("shared_is_per_block")(blocks, threads, (matches,))
    assert (matches == threads).all()


@settings(max_examples=10)
@given(n=st.integers(1, 12 * 1024), threads=st.sampled_from([1, 32, 100, 256]), blocks=st.integers(1, 2))
def test_dynamic_shared_memory_is_sized_per_launch(mod, n, threads, blocks):
    """A buffer of n ints (shared_mem = 4n bytes, up to the 48 KiB limit) filled with 3*i reads back reversed."""
    out = np.zeros(blocks * n, np.int32)
    mod.get_function("dynamic_reverse")(blocks, threads, (out, np.int32(n)), shared_mem=4 * n)
    np.testing.assert_array_equal(out.reshape(blocks, n), np.tile(3 * np.arange(n)[::-1], (blocks, 1)))


@pytest.mark.parametrize("flags", [[1] * 64, [0] * 64, [1] * 63 + [0], [0] * 40 + [1] * 24])
def test_syncthreads_count_and_or(mod, flags):
    """__syncthreads_count = number of true predicates; _and = all true; _or = any true."""
    flags = np.array(flags, np.int32)
    out = np.zeros(3, np.int32)
    mod.get_function("barrier_votes")(1, len(flags), (flags, out))
    assert out.tolist() == [flags.sum(), int(flags.all()), int(flags.any())]


# ---- warp collectives ------------------------------------------------------------------------------------------


def expected_shuffle(values, op, mask, operand, width):
    """What each lane gets, from the CUDA Programming Guide's definition of __shfl_*_sync with `width`.

    The warp is split into segments of `width` lanes. idx reads lane `operand % width` of the caller's segment; up
    and down read `operand` lanes lower/higher and keep their own value when that leaves the segment; xor reads
    lane ^ operand and keeps its own value when that lies in a later segment. Reading a lane outside `mask` is
    undefined in CUDA: the emulator returns all-ones bits (-1). Lanes outside `mask` wrote 12345.
    """
    out = np.full(32, 12345, np.int64)
    for lane in range(32):
        if not mask >> lane & 1:
            continue
        start = lane - lane % width
        if op == 0:
            source = start + operand % width
        elif op == 1:
            source = lane - operand if lane - start >= operand else lane
        elif op == 2:
            source = lane + operand if lane - start + operand < width else lane
        else:
            source = lane ^ operand if (lane ^ operand) < start + width else lane
        out[lane] = values[source] if mask >> source & 1 else -1
    return out


masks = st.one_of(st.just(FULL), st.integers(1, FULL), st.sampled_from([0x0000FFFF, 0xFFFF0000, 0x55555555, 1]))


@settings(max_examples=60)
@given(op=st.integers(0, 3), mask=masks, operand=st.integers(0, 40), log_width=st.integers(0, 5))
def test_shuffles_match_the_cuda_definition(mod, op, mask, operand, log_width):
    """Every shuffle variant, every width 1..32 and full or partial masks, against `expected_shuffle`."""
    width = 2**log_width
    operand = operand % 32 if op == 3 else operand
    values = np.arange(32, dtype=np.int32) * 10 + 7
    out = np.zeros(32, np.int32)
    mod.get_function("shuffle")(1, 32, (values, out, np.int32(op), np.uint32(mask), np.int32(operand),
                                        np.int32(width)))  # fmt: skip
    np.testing.assert_array_equal(out, expected_shuffle(values, op, mask, operand, width))


def test_shuffles_move_eight_byte_values(mod):
    """A double and a long long cross lanes bit-exactly (the emulator moves up to 8 bytes per lane)."""
    values = np.random.default_rng(0).standard_normal(32)
    ivalues = np.arange(32, dtype=np.int64) * (2**40 + 1)
    out, iout = np.zeros(32), np.zeros(32, np.int64)
    mod.get_function("shuffle_wide")(1, 32, (values, out, ivalues, iout))
    partner = np.arange(32) ^ 1
    np.testing.assert_array_equal(out, values[partner])
    np.testing.assert_array_equal(iout, ivalues[partner])


def test_warp_butterfly_sum_gives_every_lane_the_warp_total(mod):
    """Five __shfl_xor_sync steps (offsets 16, 8, 4, 2, 1) leave each lane with its warp's sum."""
    x = np.random.default_rng(1).standard_normal(4 * 128).astype(np.float32)
    out = np.zeros_like(x)
    mod.get_function("warp_sum")(4, 128, (x, out))
    expected = np.repeat(x.reshape(-1, 32).astype(np.float64).sum(axis=1), 32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=30)
@given(mask=masks, flags=st.lists(st.booleans(), min_size=32, max_size=32))
def test_ballot_any_all(mod, mask, flags):
    """__ballot_sync sets bit i for each lane i in the mask whose predicate holds; any/all are its != 0 / == mask."""
    flags = np.array(flags, np.int32)
    out = np.zeros(96, np.uint32)
    mod.get_function("votes")(1, 32, (flags, out, np.uint32(mask)))
    ballot = sum(1 << lane for lane in range(32) if mask >> lane & 1 and flags[lane])
    for lane in range(32):
        expected = [ballot, int(ballot != 0), int(ballot == mask)] if mask >> lane & 1 else [0xFFFFFFF9] * 3
        assert out[3 * lane : 3 * lane + 3].tolist() == expected, f"lane {lane}"


# ---- atomics ---------------------------------------------------------------------------------------------------


def test_atomics_from_every_thread_of_many_blocks(mod):
    """16 blocks x 256 threads add into one counter: the int total is exact, atomicMax finds the maximum, and the
    float total matches the float64 sum to float32 accumulation accuracy (4096 additions of values in [0, 1))."""
    n = 16 * 256
    rng = np.random.default_rng(2)
    ints = rng.integers(-10**6, 10**6, n, dtype=np.int32)
    floats = rng.random(n, dtype=np.float32)
    int_total, float_total = np.zeros(1, np.int32), np.zeros(1, np.float32)
    maximum, count = np.full(1, np.iinfo(np.int32).min, np.int32), np.zeros(1, np.uint32)
    mod.get_function("atomic_totals")(16, 256, (ints, floats, int_total, float_total, maximum, count))
    assert int_total[0] == ints.astype(np.int64).sum()
    assert maximum[0] == ints.max()
    assert count[0] == n
    np.testing.assert_allclose(float_total[0], floats.astype(np.float64).sum(), rtol=1e-5)


def test_cas_spin_lock_protects_a_counter(mod):
    """Each of 4 x 128 threads takes an atomicCAS spin lock, does a non-atomic counter += 1 with a __nanosleep in
    the middle (so the others really find the lock taken and spin), and releases it: the counter ends at 512."""
    lock, counter = np.zeros(1, np.int32), np.zeros(1, np.int32)
    mod.get_function("spin_lock_counter")(4, 128, (lock, counter))
    assert counter[0] == 512 and lock[0] == 0


def test_spinning_on_a_lock_whose_holder_waits_at_a_barrier_is_a_deadlock(mod):
    """Thread 0 holds the lock at a __syncthreads the spinning threads never reach: an error, not a hang."""
    start = time.perf_counter()
    with pytest.raises(DeadlockError, match="atomicCAS"):
        mod.get_function("lock_held_across_barrier")(1, 32, (np.zeros(1, np.int32),))
    assert time.perf_counter() - start < 10


# ---- coordinates and arguments ---------------------------------------------------------------------------------


@settings(max_examples=15)
@given(grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2)),
       block=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 4)))  # fmt: skip
def test_multidimensional_grids_and_blocks_index_correctly(mod, grid, block):
    """Thread (x, y, z) of block (X, Y, Z) sits at global position (X*bx + x, Y*by + y, Z*bz + z) and reports
    threadIdx = (x, y, z), blockIdx = (X, Y, Z), checked against NumPy index grids."""
    gx, gy, gz = (g * b for g, b in zip(grid, block))
    out = np.full((gz, gy, gx, 6), -1, np.int32)
    mod.get_function("coordinates")(grid, block, (out,))
    z, y, x = np.meshgrid(np.arange(gz), np.arange(gy), np.arange(gx), indexing="ij")
    expected = np.stack([x % block[0], y % block[1], z % block[2], x // block[0], y // block[1], z // block[2]], -1)
    np.testing.assert_array_equal(out, expected)


def test_scalar_arguments_of_every_type_arrive_unchanged(mod):
    """int, unsigned, float, long long and double scalars pass through the generated launcher bit-exactly."""
    outs = [np.zeros(1, t) for t in (np.int32, np.float32, np.int64, np.float64, np.uint32)]
    scalars = (np.int32(-7), np.uint32(4_000_000_000), np.float32(1.5), np.int64(2**40 + 3), np.float64(1 / 3))
    mod.get_function("echo_scalars")(1, 1, (*scalars, *outs))
    assert [o[0] for o in outs] == [-7, np.float32(1.5), 2**40 + 3, 1 / 3, 4_000_000_000]


def test_signatures_are_parsed_from_the_source(mod):
    """The regex reader finds the kernels and turns each declaration into base type / pointer / const."""
    p = parse_param("const float* __restrict__ x", "k")
    assert (p.name, p.c_type, p.is_pointer, p.is_const, p.dtype) == ("x", "float", True, True, np.float32)
    p = parse_param("unsigned long long n", "k")
    assert (p.name, p.c_type, p.is_pointer, p.dtype) == ("n", "unsigned long long", False, np.uint64)
    assert [p.name for p in mod.kernels["shuffle"]] == ["values", "out", "op", "mask", "operand", "width"]
    assert find_kernels('// extern "C" __global__ void gone(int n) {}\n') == {}
    with pytest.raises(EmulatorError, match='extern "C"'):
        find_kernels("__global__ void k(int n) {}")


# ---- launch-bound and argument errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, block, shared, match",
    [
        (1, 0, 0, r"block.x = 0"),
        (1, -32, 0, r"block.x = -32"),
        (0, 32, 0, r"grid.x = 0"),
        (1, 1025, 0, r"block.x = 1025"),
        (1, (32, 32, 2), 0, r"2048 threads"),
        (1, (1, 1, 65), 0, r"block.z = 65"),
        (1, (1, 2, 3, 4), 0, r"1 to 3 ints"),
        (1, 32, 48 * 1024 + 4, r"limit of 49152"),
        (1, 32, -4, r"non-negative"),
    ],
)
def test_launch_bounds_are_checked(mod, grid, block, shared, match):
    """CUDA's limits for sm_80/sm_90: 1024 threads per block, block.z <= 64, 48 KiB of shared memory by default."""
    n = np.int32(1)
    with pytest.raises(EmulatorError, match=match):
        mod.get_function("dynamic_reverse")(grid, block, (np.zeros(1, np.int32), n), shared_mem=shared)


def test_static_and_dynamic_shared_memory_count_together(mod):
    """40 KiB of static __shared__ (read from the library's symbols) + 8 KiB dynamic fits 48 KiB; 8 KiB + 4 does not;
    raising max_dynamic_shared_size_bytes (CUDA's opt-in attribute) lifts the default limit."""
    kernel = mod.get_function("big_static_shared")
    assert kernel.static_shared_bytes == 40 * 1024
    assert mod.get_function("block_reverse").static_shared_bytes == 1024 * 4  # float buffer[1024]
    assert mod.get_function("dynamic_reverse").static_shared_bytes == 0
    out = np.zeros(32, np.float32)
    kernel(1, 32, (out,), shared_mem=8 * 1024)
    np.testing.assert_array_equal(out, np.arange(32))
    with pytest.raises(EmulatorError, match="40960 bytes of static"):
        kernel(1, 32, (out,), shared_mem=8 * 1024 + 4)
    kernel.max_dynamic_shared_size_bytes = 64 * 1024
    kernel(1, 32, (out,), shared_mem=64 * 1024)


def test_argument_errors_name_the_parameter(mod):
    kernel = mod.get_function("dynamic_reverse")  # (int* out, int n)
    out = np.zeros(8, np.int32)
    with pytest.raises(EmulatorError, match="takes 2 arguments"):
        kernel(1, 8, (out,))
    with pytest.raises(TypeError, match="'int n'.*int32.*got int"):
        kernel(1, 8, (out, 8))
    with pytest.raises(TypeError, match="'int n'.*int32.*got int64"):
        kernel(1, 8, (out, np.int64(8)))
    with pytest.raises(TypeError, match="'int\\* out'.*int32, got float32"):
        kernel(1, 8, (out.astype(np.float32), np.int32(8)))
    with pytest.raises(TypeError, match="C-contiguous"):
        kernel(1, 8, (np.zeros(16, np.int32)[::2], np.int32(8)))
    out.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        kernel(1, 8, (out, np.int32(8)))
    with pytest.raises(EmulatorError, match="no kernel 'missing'"):
        mod.get_function("missing")


# ---- kernels that break CUDA's rules fail fast -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, match",
    [
        ("divergent_barrier", r"16 threads wait at __syncthreads.*16 have exited"),
        ("shuffle_against_barrier", r"16 threads wait at __syncthreads, 16 wait at a warp collective"),
        ("shuffle_with_exited_lane", r"mask 0xffffffff, but lane 16 .* has already exited"),
    ],
)
def test_deadlocks_raise_instead_of_hanging(mod, kernel, match):
    """Each kernel can never finish on a GPU (undefined behaviour: in practice a hang); the emulator names the
    kernel, the block and who waits where, within a fraction of a second."""
    start = time.perf_counter()
    with pytest.raises(DeadlockError, match=match) as error:
        mod.get_function(kernel)(1, 32, (np.zeros(32, np.float32),))
    assert f"kernel '{kernel}', block (0, 0, 0) of 32 threads" in str(error.value)
    assert time.perf_counter() - start < 2


def test_mask_without_own_lane_is_an_error(mod):
    with pytest.raises(EmulatorError, match="does not include its own lane") as error:
        mod.get_function("mask_without_self")(1, 32, (np.zeros(32, np.float32),))
    assert not isinstance(error.value, DeadlockError)


def test_a_deadlock_leaves_the_module_usable(mod):
    """After an aborted launch, the next launch of the same module runs normally."""
    with pytest.raises(DeadlockError):
        mod.get_function("divergent_barrier")(2, 64, (np.zeros(64, np.float32),))
    sums = np.zeros(1, np.int32)
    mod.get_function("tree_sum")(1, 64, (np.ones(64, np.int32), sums))
    assert sums[0] == 64


# ---- building ----------------------------------------------------------------------------------------------------


@needs_compiler
def test_compile_error_carries_the_compiler_message(cache_dir):
    code = 'extern "C" __global__ void broken(float* x) { x[0] = undeclared_thing; }'
    with pytest.raises(EmulatorError, match="undeclared_thing") as error:
        EmuModule(code=code, name="broken", cache_dir=cache_dir)
    assert "compiling broken for the emulator failed" in str(error.value)


@needs_compiler
def test_extern_shared_is_rejected_with_the_macro_to_use(cache_dir):
    code = 'extern "C" __global__ void k(float* x) { extern __shared__ float s[]; x[0] = s[0]; }'
    with pytest.raises(EmulatorError, match="NANOLLM_DYNAMIC_SHARED"):
        EmuModule(code=code, name="extern_shared", cache_dir=cache_dir)


@needs_compiler
def test_second_module_of_the_same_source_reuses_the_cached_build(cache_dir):
    """The library is cached by the hash of its inputs: the same source loads without compiling (the file's mtime
    is unchanged), and a changed source compiles anew."""
    code = 'extern "C" __global__ void add_one(int* x) { x[threadIdx.x] += 1; }'
    first = EmuModule(code=code, name="cached", cache_dir=cache_dir)
    mtime = first.library_path.stat().st_mtime_ns
    second = EmuModule(code=code, name="cached", cache_dir=cache_dir)
    assert first.compiled and not second.compiled
    assert second.library_path == first.library_path and second.library_path.stat().st_mtime_ns == mtime
    x = np.zeros(4, np.int32)
    second.get_function("add_one")(1, 4, (x,))
    assert x.tolist() == [1, 1, 1, 1]
    changed = EmuModule(code=code + "\n// changed\n", name="cached", cache_dir=cache_dir)
    assert changed.compiled and changed.library_path != first.library_path
    assert not list(cache_dir.glob("build-*")), "temporary build directories are removed"


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(CompilerNotFound, match="no C\\+\\+ compiler found"):
        EmuModule(code='extern "C" __global__ void k(int* x) {}', name="nocompiler")


# ---- kernels/build.py: the nvcc resource check -----------------------------------------------------------------

PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'dyn' for 'sm_80'
ptxas info    : Function properties for dyn
    416 bytes stack frame, 532 bytes spill stores, 532 bytes spill loads
ptxas info    : Used 24 registers, used 1 barriers, 416 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Compiling entry function 'reverse' for 'sm_90'
ptxas info    : Function properties for reverse
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 4096 bytes smem
"""


def test_ptxas_report_is_parsed():
    """Real CUDA 13 `ptxas -v` lines (above) -> one row per kernel and architecture."""
    assert parse_ptxas(PTXAS_OUTPUT) == [
        {"kernel": "dyn", "arch": "sm_80", "registers": 24, "smem": 0, "stack": 416, "spill_stores": 532,
         "spill_loads": 532},
        {"kernel": "reverse", "arch": "sm_90", "registers": 12, "smem": 4096, "stack": 0, "spill_stores": 0,
         "spill_loads": 0},
    ]  # fmt: skip


def _build(*args, path=None):
    env = dict(os.environ, **({"PATH": path} if path is not None else {}))
    return subprocess.run([sys.executable, str(ROOT / "kernels" / "build.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)  # fmt: skip


def test_build_without_nvcc_says_so_and_passes():
    result = _build("--nvcc", str(SEMANTICS), path=str(Path(sys.executable).parent))
    assert result.returncode == 0
    assert "nvcc not found" in result.stdout


needs_nvcc = pytest.mark.skipif(subprocess.run(["which", "nvcc"], capture_output=True).returncode != 0,
                                reason="nvcc is not installed")  # fmt: skip


@needs_nvcc
def test_build_reports_every_kernel_for_both_architectures():
    """The test kernels are real CUDA: nvcc compiles them for sm_80 and sm_90 without spills."""
    result = _build("--nvcc", str(SEMANTICS))
    assert result.returncode == 0, result.stderr
    for arch in ("sm_80", "sm_90"):
        assert any(line.split()[1:3] == ["block_reverse", arch] for line in result.stdout.splitlines()[2:-1])
    assert "0 compile errors, 0 spills" in result.stdout


@needs_nvcc
def test_build_fails_on_a_spill_and_on_a_compile_error(tmp_path):
    """Capping registers at 24 forces the 48-float array of this kernel to spill; a syntax error fails to compile."""
    spilling = tmp_path / "spill.cu"
    spilling.write_text(
        'extern "C" __global__ void spill(const float* x, float* y, int n) {\n'
        "    float a[48];\n"
        "#pragma unroll\n    for (int i = 0; i < 48; ++i) a[i] = x[i * n + threadIdx.x];\n"
        "    float s = 0;\n"
        "#pragma unroll\n    for (int j = 0; j < 48; ++j)\n"
        "#pragma unroll\n        for (int i = 0; i < 48; ++i) s += a[i] * a[(i + j) % 48];\n"
        "#pragma unroll\n    for (int i = 0; i < 48; ++i) y[i * n + threadIdx.x] = a[i] * s;\n}\n"
    )
    result = _build("--nvcc", str(spilling), "--nvcc-option=-maxrregcount=24")
    assert result.returncode == 1 and "SPILL" in result.stdout and "kernel spill spills" in result.stderr
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void broken(float* x) { x[0] = undeclared_thing; }\n')
    result = _build("--nvcc", str(broken))
    assert result.returncode == 1 and "undeclared_thing" in result.stderr


# ---- the portable fiber switch and concurrent launches ---------------------------------------------------------


@needs_compiler
def test_ucontext_fallback_gives_the_same_results(cache_dir):
    """Built with -DNANOLLM_EMU_UCONTEXT the scheduler switches fibers with POSIX swapcontext (what non-x86-64
    machines use) instead of the hand-written x86-64 switch: barriers, shuffles and deadlocks behave the same."""
    slow = EmuModule(path=SEMANTICS, cache_dir=cache_dir, options=("-DNANOLLM_EMU_UCONTEXT",))
    x = np.random.default_rng(3).standard_normal(2 * 96).astype(np.float32)
    out = np.zeros_like(x)
    slow.get_function("block_reverse")(2, 96, (x, out))
    np.testing.assert_array_equal(out, x.reshape(2, 96)[:, ::-1].ravel())
    values, shuffled = np.arange(32, dtype=np.int32) * 10 + 7, np.zeros(32, np.int32)
    args = (values, shuffled, np.int32(2), np.uint32(FULL), np.int32(3), np.int32(8))
    slow.get_function("shuffle")(1, 32, args)
    np.testing.assert_array_equal(shuffled, expected_shuffle(values, 2, FULL, 3, 8))
    with pytest.raises(DeadlockError):
        slow.get_function("divergent_barrier")(1, 32, (np.zeros(32, np.float32),))


def test_launches_from_two_python_threads_do_not_mix(mod):
    """ctypes releases the GIL during a launch, so two Python threads can run kernels of one module at the same
    time. Scheduler state and __shared__ arrays are per OS thread, so each launch still gets exactly its own
    answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal(200 * 256).astype(np.float32) for _ in range(4)]

    def reverse(x):
        out = np.zeros_like(x)
        mod.get_function("block_reverse")(200, 256, (x, out))
        return out

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(reverse, inputs))
    for x, out in zip(inputs, results):
        np.testing.assert_array_equal(out, x.reshape(200, 256)[:, ::-1].ravel())


def test_math_builtins_match_numpy(mod):
    """The CUDA math functions (fast `__` intrinsics included) against NumPy in float32; the fast intrinsics are
    the accurate functions here, so __expf equals expf exactly. __float2int_rn rounds half to even like np.rint."""
    rng = np.random.default_rng(5)
    n = 37
    x = rng.uniform(-3, 3, n).astype(np.float32)
    y = rng.uniform(0.5, 2, n).astype(np.float32) * rng.choice([-1, 1], n).astype(np.float32)
    out, iout = np.zeros(10 * n, np.float32), np.zeros(4 * n, np.int32)
    mod.get_function("math_builtins")(2, 32, (x, y, out, iout, np.int32(n)))
    out, iout = out.reshape(n, 10), iout.reshape(n, 4)
    a, b = x.astype(np.float64), y.astype(np.float64)
    expected = [np.zeros(n), np.exp(a), np.log(abs(a)) + np.log(abs(b)), np.sqrt(abs(a)) / np.sqrt(abs(b)),
                np.tanh(a), abs(a - b), a / b, abs(a) ** b, np.full(n, -np.finfo(np.float32).max),
                np.rint(4 * x)]  # fmt: skip
    np.testing.assert_allclose(out, np.stack(expected, 1), rtol=2e-6, atol=1e-6)
    i = np.arange(n)
    popcount = np.array([bin(v).count("1") for v in i])
    np.testing.assert_array_equal(iout, np.stack([np.full(n, 3), np.minimum(i, 3) + np.maximum(i, 3),
                                                  np.full(n, 2), popcount + 100], 1))  # fmt: skip
