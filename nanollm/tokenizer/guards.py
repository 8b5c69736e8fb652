"""What stands between the outside world and the tokenizers: text that is not valid Unicode, patterns that never end.

Surrogates. A Python str may hold UTF-16 surrogates (U+D800..U+DFFF): JSON's "\\ud83d\\udc4d" escapes, text from
Windows APIs, bytes decoded with ``surrogateescape``. They are not characters and have no UTF-8 encoding, so a
byte-level tokenizer would raise UnicodeEncodeError on them. ``repair_surrogates`` does what tiktoken does
(``Encoding.encode``'s fallback): round-trip the text through UTF-16, which joins each valid high+low pair into the
astral character it stands for ("\\ud83d\\udc4d" -> "👍") and replaces every lone surrogate with U+FFFD. Every
model's ``encode_ordinary`` starts with it, before any normalizer or pattern sees the text, so all formats agree.

Patterns. A pre-tokenizer or normalizer regex read from a file (tokenizer.json's Split and Replace,
nanollm_tokenizer.json's pattern) or given on the command line is code written by someone else, and a regex engine
that backtracks can take exponential time: ``(?:a|aa)+$`` on "a" * 40 + "!" tries every way of splitting forty a's
before it fails. ``TimedPattern`` runs such a pattern with the ``regex`` module's ``timeout=`` argument and turns a
timeout into a TokenizerError naming where the pattern came from.

The budget is ``PATTERN_SECONDS_BASE + PATTERN_SECONDS_PER_CHAR * len(text)`` for one call. Measured (a 2-core
machine shared with other jobs, the ``regex`` module with timeout on, 1,000,000-character inputs): the built-in
patterns (gpt2, r50k, cl100k, o200k, llama3) and Qwen 2's take at most 0.85 microseconds per character on the worst
inputs tried (a run of digits, which Qwen's pattern matches one by one; random mixes of letters, digits,
punctuation, spaces and newlines, which start a new match every 1-2 characters), and 0.05-0.5 on long runs of one
character ("x" * 10**6, " " * 10**6) and on English text. The allowance of 20 microseconds per character is over 20
times the worst of those, so no legitimate input trips it, however long (10 MB of text gets 200 s); the base second
covers short texts, where a catastrophic pattern is refused within about one second. The clock is the process's CPU
time (what the regex module measures): a busy machine does not eat into the budget, but other threads of the same
process working at the same time do.

Cost, and what runs without the limit: with a timeout the regex module reads the CPU clock before every match
(``clock()`` in ``_regex.c``, a system call of about 0.6 microseconds), and a pre-tokenizer starts a match every few
characters. Measured with ``make bench-tokenizer``: GPT-2 encoding fell from 7.9 to 3.5 MB/s cold (5.3x slower than
tiktoken, past the 5x goal) and from 14.6 to 4.6 MB/s warm. So the patterns nanollm ships
(``byte_level.NAMED_PATTERNS``: GPT-2's, tiktoken's and Llama 3's, measured above on every input tried; tiktoken
runs its own with a backtracking engine on all the world's text) run without the limit, also when a file spells one
of them exactly (Llama 3's tokenizer.json does); every other pattern runs under it. Patterns nanollm builds that
cannot backtrack (escaped literals such as special tokens and "▁" boundaries, and Digits' ``\\p{N}+``) run without it
too.
"""
from __future__ import annotations

import regex

from .errors import TokenizerError

PATTERN_SECONDS_BASE = 1.0
PATTERN_SECONDS_PER_CHAR = 20e-6
_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def repair_surrogates(text: str) -> str:
    """Join valid surrogate pairs, replace lone surrogates with U+FFFD (tiktoken's rule, see the module docstring).

    "a\\ud83d\\udc4d" -> "a👍";  "\\ud83d!" -> "\\ufffd!";  text without surrogates is returned as it is.
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def pattern_budget(text: str) -> float:
    """Seconds of CPU time one call of a pattern may take on ``text`` (see the module docstring for the numbers)."""
    return PATTERN_SECONDS_BASE + PATTERN_SECONDS_PER_CHAR * len(text)


class TimedPattern:
    """A compiled regex that gives up after ``pattern_budget(text)`` seconds, naming ``origin`` in the error.

    ``origin`` says where the pattern came from, for the message: "tokenizer.json: pre_tokenizer.pretokenizers[0]
    .pattern.Regex", "training". ``limited=False`` runs without the limit: only for the patterns nanollm ships (see
    the module docstring).
    """

    def __init__(self, compiled: regex.Pattern, origin: str, *, limited: bool = True):
        self.compiled = compiled
        self.origin = origin
        self.limited = limited

    @property
    def pattern(self) -> str:
        return self.compiled.pattern

    @property
    def groups(self) -> int:
        return self.compiled.groups

    def findall(self, text: str) -> list:
        return self._run(self.compiled.findall, text)

    def finditer(self, text: str) -> list:
        """The matches, as a list rather than a lazy iterator, so that running out of time is reported here."""
        return self._run(lambda t, timeout: list(self.compiled.finditer(t, timeout=timeout)), text)

    def sub(self, replacement: str, text: str) -> str:
        """Replace each match with ``replacement`` taken literally (tokenizers' Replace: no backslash escapes)."""
        return self._run(lambda t, timeout: self.compiled.sub(lambda _: replacement, t, timeout=timeout), text)

    def _run(self, method, text: str):
        budget = pattern_budget(text) if self.limited else None
        try:
            return method(text, timeout=budget)
        except TimeoutError:
            raise TokenizerError(
                f"{self.origin}: the pattern {self.pattern[:80]!r} ran longer than its {budget:.1f} s budget on "
                f"{len(text)} characters (catastrophic backtracking?); refusing it"
            ) from None
