"""Sizes from files and flags are checked against the machine's memory before anything is allocated.

A Llama config may claim any context (no tensor has a position axis to contradict it), and --num-beams,
--max-new-tokens and a batch multiply into the KV cache: terabytes are a typo away. Each such request is one
MemoryError naming what was asked for, its size and what the machine has, raised at once: these tests also time the
refusal and trace NumPy's allocations (tracemalloc sees them) to show that nothing large was allocated first.
"""
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import nanollm
import nanollm.memory
from nanollm.kv_cache import kv_cache_bytes
from nanollm.logits_processors import TokenHistory
from nanollm.memory import available_bytes, check_fits, gib, meminfo_available
from tests.hf_models import Options, build_checkpoint
from weights_tools.convert import CheckpointError

CLAIMED_CONTEXT = 10**12
MESSAGE = re.compile(r".+ needs [\d,]+\.\d GiB; this machine has [\d,]+\.\d GiB available")


@pytest.fixture(scope="module")
def long_context_llama(tmp_path_factory):
    """A small Llama whose config.json claims a context of 10**12 positions."""
    directory, _ = build_checkpoint(tmp_path_factory.mktemp("llama"), Options(arch="llama", n_kv_head=2))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config["max_position_embeddings"] = CLAIMED_CONTEXT
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return nanollm.load(directory)


@pytest.fixture
def tiny_machine(monkeypatch):
    """Pretend the machine has 4 KiB free, so that each check can be seen to run on small arrays."""
    monkeypatch.setattr(nanollm.memory, "available_bytes", lambda: 4096)


@pytest.fixture
def tiny_machine_but_the_cache(monkeypatch):
    """Pretend the machine has 256 KiB free: 100 beams' cache of 4 positions fits (100 KiB), their tables do not."""
    monkeypatch.setattr(nanollm.memory, "available_bytes", lambda: 256 * 1024)


def refused_at_once(call) -> str:
    """call() must raise MemoryError within a second, having allocated under 16 MiB; returns the message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(MemoryError) as e:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0 and peak < 16 * 2**20, (time.perf_counter() - start, peak)
    assert MESSAGE.fullmatch(str(e.value)), str(e.value)
    return str(e.value)


def test_a_huge_claimed_context_with_huge_max_new_tokens_is_refused_by_size(long_context_llama):
    """The old path: encode_prompt accepts (3 + 10**11 fits in 10**12), then np.zeros of 23 TiB: a NumPy error
    about a shape, or a lazily granted allocation and the OOM killer once the cache fills."""
    model = long_context_llama
    message = refused_at_once(lambda: model.generate([1, 2, 3], max_new_tokens=10**11, temperature=0))
    size = gib(kv_cache_bytes(model.config, 1, 3 + 10**11))
    assert message.startswith(f"a KV cache of 1 sequence(s) x 100,000,000,003 positions (2 layers) needs {size};")
    assert size == "23,841.8 GiB"  # 2 (k, v) x 2 layers x 2 kv heads x head size 8 x 4 bytes = 256 bytes a position


def test_num_beams_from_a_flag_is_refused_by_size(long_context_llama):
    message = refused_at_once(lambda: long_context_llama.generate([1, 2, 3], max_new_tokens=5, temperature=0,
                                                                  num_beams=10**9))
    assert message.startswith("a KV cache of 1000000000 sequence(s) x 8 positions")


def test_beam_search_score_tables_are_counted_too(tiny_machine_but_the_cache, long_context_llama):
    """With a small cache but many beams, the (num_beams, V) tables of each step are the larger part."""
    message = refused_at_once(lambda: long_context_llama.generate([1, 2], max_new_tokens=2, temperature=0,
                                                                  num_beams=100))
    assert message.startswith("beam search's score tables for num_beams=100 x 97 tokens")


def test_a_batch_is_counted_whole(long_context_llama):
    message = refused_at_once(lambda: long_context_llama.generate([[1, 2], [3, 4, 5]], max_new_tokens=10**10,
                                                                  temperature=0))
    assert message.startswith("a KV cache of 2 sequence(s) x 10,000,000,003 positions")


def test_gpt2_position_table_bounds_its_context_by_shape(tmp_path):
    """GPT-2 has a position table, so a claimed context is refused by the shape check, before any size matters."""
    directory, _ = build_checkpoint(tmp_path, Options(arch="gpt2"))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config["n_positions"] = CLAIMED_CONTEXT
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"'transformer.wpe.weight' has shape \(160, 32\), config.json implies "
                                              r"\(1000000000000, 32\)"):
        nanollm.load(directory)


def test_every_large_allocation_is_checked(tiny_machine, long_context_llama, tmp_path):
    model = long_context_llama
    with pytest.raises(MemoryError, match=r"^logits of shape \(2, 10, 97\) needs 0.0 GiB"):
        model.forward(np.ones((2, 10), dtype=np.int64))  # 2 x 10 x 97 x 4 = 7,760 bytes
    with pytest.raises(MemoryError, match=r"^the token history of 10 sequence\(s\) x 97 tokens"):
        TokenHistory([[1]] * 10, 97)  # 10 x 97 x 5 bytes
    with pytest.raises(MemoryError, match=r"^a KV cache of 1 sequence\(s\) x 22 positions"):
        model.generate([1, 2], max_new_tokens=20)  # 22 x 256 bytes
    directory, _ = build_checkpoint(tmp_path, Options(arch="gpt2"))
    with pytest.raises(MemoryError, match=f"^{re.escape(str(directory))}: the weights as float32 needs"):
        nanollm.load(directory)


def test_check_fits_passes_what_fits_and_names_both_sizes(monkeypatch):
    monkeypatch.setattr(nanollm.memory, "available_bytes", lambda: 20 * 2**30 + 2**29)
    check_fits(20 * 2**30, "twenty GiB")  # fits: no error
    with pytest.raises(MemoryError) as e:
        check_fits(3 * 2**40, "a KV cache")
    assert str(e.value) == "a KV cache needs 3,072.0 GiB; this machine has 20.5 GiB available"
    assert gib(10**400).endswith(".0 GiB")  # a size from a file may be too large for a float: integer arithmetic


def test_available_memory_is_meminfo_else_physical_memory(monkeypatch):
    assert meminfo_available("MemTotal:  32768 kB\nMemAvailable:   16384 kB\n") == 16384 * 1024
    with pytest.raises(ValueError, match="no MemAvailable"):
        meminfo_available("MemTotal:  32768 kB\n")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < available_bytes() <= physical

    def no_proc(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(nanollm.memory, "read_text", no_proc)  # macOS: no /proc
    assert available_bytes() == physical


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from nanollm.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(640_000, np.float32)  # a first 2.5 MB block: glibc's own threshold adapts after it
before = faults()
for _ in range(50):  # what a forward pass does: make a few-MB array, use it, free it, make the next
    np.ones(640_000, np.float32) + 1.0
print(kept, faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the page-fault count and glibc are Linux's")
def test_keep_freed_memory_makes_repeated_arrays_reuse_warm_pages():
    """With glibc's defaults each new few-MB array is fresh memory, faulted in page by page; once the program calls
    keep_freed_memory, the same loop reuses the freed pages (far fewer faults)."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept, int(faults)
    (_, default), (kept, warm) = run("default"), run("keep")
    assert kept == "True"
    assert warm * 5 < default, (warm, default)
