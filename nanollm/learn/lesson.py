"""What every lesson shares: the Lesson record, the models and tokenizers the lessons run, and how numbers print.

Everything here is offline: the demo model and its tokenizer ship inside the package (nanollm/demo_model/), and
GPT-2's tokenizer is used only when its files are already on this machine (`gpt2_tokenizer`).
"""
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weights_tools import hub

from ..loader import DEMO_MODEL, load
from ..model import Model
from ..tokenizer import Tokenizer, TokenizerError
from ..tokenizer.decoding import piece_literal

WIDTH = 110  # columns of prose
GPT2_DIR_VARIABLE = "NANOLLM_GPT2_DIR"  # a folder with GPT-2's tokenizer files (encoder.json + vocab.bpe, or more)


@dataclass(frozen=True)
class Lesson:
    """One lesson: what it is called, the one line --list shows, the code that runs it, and where to read next."""

    title: str  # "Tokens: text becomes ids"
    shows: str  # one line for --list
    run: Callable[[], None]  # prints the lesson
    read_next: tuple[str, str]  # ("nanollm/tokenizer/bpe.py", "bpe_merge"): a file, and a function or Class.method

    @property
    def read_next_line(self) -> str:
        return f"Read next: {self.read_next[0]}, {self.read_next[1]}"


def demo_model(backend="numpy") -> Model:
    """The 1 M-parameter GPT-2 shipped with nanollm (nanollm/demo_model/README.md), on `backend`."""
    return load(DEMO_MODEL, backend=backend)


def gpt2_tokenizer() -> tuple[Tokenizer | None, str]:
    """GPT-2's tokenizer if its files are on this machine, and where they were found (or how to provide them).

    Looked for in $NANOLLM_GPT2_DIR, then in nanollm's hub cache (never the network: offline=True). A folder named
    by the variable that holds no tokenizer is an error, since the user asked for it.
    """
    folder = os.environ.get(GPT2_DIR_VARIABLE)
    if folder:
        return Tokenizer.from_pretrained(folder), f"${GPT2_DIR_VARIABLE}={folder}"
    try:
        snapshot = hub.resolve_model("gpt2", offline=True, progress=False)
    except hub.HubError:
        return None, (f"GPT-2's tokenizer files are not on this machine: set {GPT2_DIR_VARIABLE} to a folder holding "
                      f"encoder.json + vocab.bpe (or tokenizer.json), or fetch GPT-2 once with network access "
                      f"(python -m nanollm.generate --model gpt2 \"Hi\"), and run this lesson again")
    try:
        return Tokenizer.from_pretrained(snapshot), f"the hub cache ({snapshot})"
    except TokenizerError as e:
        raise TokenizerError(f"GPT-2 in the hub cache at {snapshot} has no usable tokenizer: {e}") from None


def numbers(values, digits: int = 4) -> str:
    """A vector as one line: [0.187 0.207 0.229 0.377] for digits=3. -inf prints as -inf."""
    return "[" + " ".join(f"{float(v):.{digits}f}" for v in values) + "]"


def piece(tokenizer: Tokenizer, token_id: int) -> str:
    """One token's text as a literal, as `encode --pieces` prints it: ' assistant', or b'\\xf0\\x9f' for bytes
    that are part of a character."""
    return piece_literal(tokenizer.token_to_bytes(int(token_id)))


def heading(text: str) -> None:
    print()
    say(f"-- {text}")


def say(text: str) -> None:
    """Print a line of prose wrapped at WIDTH columns, continuation lines indented like the first."""
    indent = " " * (len(text) - len(text.lstrip(" ")))
    print(textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))


def max_difference(a, b) -> float:
    """The largest absolute difference of two arrays: how "equal" two ways of computing one thing are."""
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
