"""A recording of the cpu backend's kernel calls, to be replayed from C (kernels/replay_cpu.cpp says why).

While the cpu backend records (`CpuBackend.recording_calls`), each kernel call it makes runs as usual and is also
kept: which kernel, with which arguments. `replay` then makes the same calls again, from one C function, on the same
memory. That is right only if every address a call names means the same thing at the next step, so the recording
accepts four kinds of memory and no other:

  known     arrays that outlive the step unchanged in place: the weights, the KV cache's buffers
  inputs    the step's inputs (the embedded tokens, RoPE's cos and sin, a paged step's block tables and lengths):
            the recording keeps them, and the caller fills them again before each replay
  outputs   the arrays the backend made for the calls' results (`output`): kept, and written again by each replay
  cells     the numbers a KV cache's decode step changes, each row's length after the step, where the keys go and
            how far attention reads (`cell`): small int32 arrays, set to start + their offset before each replay

An address in none of them belongs to NumPy (an op that fell back to the NumPy reference, a copy made on the way):
a replay would read it stale, so the recording is refused and `problem` names the call. What this cannot see is
Python writing into one of these arrays between two calls; nanollm/replayed_step.py checks a replay against a step
run from Python, bit for bit, before it trusts one.
"""
import bisect
import ctypes

import numpy as np

# The kernels a recording may hold, in the order of `enum Kernel` in kernels/replay_cpu.cpp.
KERNELS = ("linear_panels", "attention_cached", "layer_norm_rows", "rms_norm_rows", "rope_rows", "gelu_rows",
           "gelu_exact_rows", "silu_mul_rows", "gelu_mul_rows", "add_rows", "softcap_rows", "write_slots")
# One call, as kernels/replay_cpu.cpp's `struct Call`: the integer and address arguments in order, then the floats.
CALL = np.dtype([("kernel", np.int64), ("a", np.int64, 20), ("f", np.float32, 2)])


def span(a: np.ndarray) -> tuple[int, int]:
    """The bytes an array's elements lie in: [first, end)."""
    first = a.__array_interface__["data"][0]
    return first, first + a.nbytes


class Recording:
    """The kernel calls of one step, with the arrays they touch (see the module docstring).

    lib: the compiled library; start: the step's first slot (cells are kept relative to it);
    known: the arrays of the weights and the cache; inputs: the step's inputs.
    """

    def __init__(self, lib, start: int, known: list, inputs: list):
        self.lib, self.start = lib, start
        self.spans = sorted(span(a) for a in known + inputs)  # where a call may read or write: (first, end)
        self.outputs, self.cells, self.calls = [], [], []  # kept arrays; (cell, offset); (kernel, ints, floats)
        self.problem = None  # why this recording cannot be replayed; None while it can

    def output(self, a: np.ndarray) -> np.ndarray:
        """An array the backend made for a call's result: kept, and a replay writes it again."""
        self.outputs.append(a)
        bisect.insort(self.spans, span(a))
        return a

    def cell(self, a: np.ndarray, value: int) -> np.ndarray:
        """An int32 array holding `value`, a slot of this step (start + offset): a replay sets it for its step."""
        self.cells.append((a, value - self.start))
        bisect.insort(self.spans, span(a))
        return a

    def __getattr__(self, name):
        """The backend calls `lib.<kernel>(...)`; while it records, `lib` is this object: run the call and keep it."""
        kernel = getattr(self.lib, name)

        def call(*args):
            kernel(*args)
            self.keep(name, kernel.argtypes, args)

        return call

    def keep(self, name: str, argtypes, args) -> None:
        if self.problem is not None:
            return
        if name not in KERNELS:
            self.problem = f"{name} cannot be replayed"
            return
        ints, floats = [], []
        for kind, arg in zip(argtypes, args):
            if kind is ctypes.c_float:
                floats.append(arg)
                continue
            ints.append(0 if arg is None else int(arg))
            if kind is ctypes.c_void_p and arg is not None and not self.holds(arg):
                self.problem = (f"{name}'s argument {len(ints) - 1} is memory the recording does not hold "
                                "(an op fell back to NumPy, or made a copy)")
                return
        self.calls.append((KERNELS.index(name), ints, floats))

    def holds(self, address: int) -> bool:
        """Whether address lies in one of the spans: the last one starting at or before it, or (spans may nest: a
        view inside its buffer) any."""
        i = bisect.bisect_right(self.spans, (address, float("inf"))) - 1
        return (i >= 0 and address < self.spans[i][1]) or any(lo <= address < hi for lo, hi in self.spans)

    def table(self) -> np.ndarray:
        """The calls as kernels/replay_cpu.cpp reads them. -> (n_calls,) CALL"""
        table = np.zeros(len(self.calls), dtype=CALL)
        for row, (kernel, ints, floats) in zip(table, self.calls):
            row["kernel"], row["a"][: len(ints)], row["f"][: len(floats)] = kernel, ints, floats
        return table


class Replay:
    """A finished recording, ready to run again: `run(start)` after the caller has refilled the inputs."""

    def __init__(self, recording: Recording):
        if recording.problem is not None:
            raise ValueError(recording.problem)
        self.lib, self.cells = recording.lib, recording.cells
        self.outputs = recording.outputs  # kept alive: the table names them
        self.calls = recording.table()

    def run(self, start: int) -> None:
        """Every recorded call again, for a step whose first slot is `start`."""
        for cell, offset in self.cells:
            cell[...] = start + offset
        self.lib.replay_calls(self.calls.ctypes.data, len(self.calls))
