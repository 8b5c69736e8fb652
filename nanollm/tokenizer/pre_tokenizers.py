"""Pre-tokenizers: cutting text into the pieces ("words") that BPE merges inside, and never across.

A Hugging Face tokenizer.json names its pre-tokenizer as one step or a Sequence of steps. Each step cuts every piece
that the step before it made (tokenizers' ``PreTokenizedString.split``; the first step gets the whole text between
two added tokens), and a piece cut down to nothing is dropped. The steps nanollm reproduces, and what each makes:

    Split(pattern, behavior)     cut at each match of a regex or a string; the behavior says where a match goes.
                                 "a-b--c" cut at "-":   Isolated            ["a", "-", "b", "-", "-", "c"]
                                                        Contiguous          ["a", "-", "b", "--", "c"]
                                                        Removed             ["a", "b", "c"]
                                                        MergedWithPrevious  ["a-", "b-", "-", "c"]
                                                        MergedWithNext      ["a", "-b", "-", "-c"]
    Digits(individual_digits)    cut out numbers (Unicode category N, Rust's ``char::is_numeric``): "in 2024!" ->
                                 ["in ", "2024", "!"], and with individual_digits ["in ", "2", "0", "2", "4", "!"].
                                 SmolLM and StarCoder run Digits(individual_digits=true) before ByteLevel, so none of
                                 their tokens holds two digits.
    ByteLevel(add_prefix_space, use_regex)
                                 a space before each piece that does not start with one, then GPT-2's regex,
                                 Isolated. (Its other half, bytes shown as printable characters, is byte_level.py's.)
    Metaspace(replacement, prepend_scheme, split)
                                 spaces become "▁"; a "▁" before each piece ("always") or only before the piece that
                                 starts the text ("first"); then, with split, a cut before each "▁": Split("▁",
                                 MergedWithNext).

Each step is a small object with ``cut(piece, starts_text) -> (pieces, first_starts_at_zero)``; ``PreTokenizer``
runs them in order. ``starts_text`` tells whether the piece begins at the start of the text: only Metaspace's "first"
asks (tokenizers checks that the piece's offset in the original text is 0), and only a Removed cut can move the first
piece away from it.

The cuts are tokenizers' own algorithm: the text as consecutive spans, each a match or the text between matches
(``find_matches`` in ``tokenizer/pattern.rs``), folded by the behavior (``NormalizedString::split`` in
``tokenizer/normalizer.rs``). Isolated keeps every span as it is, which is ``split_words``, the fast path
that GPT-2's, tiktoken's and Llama 3's regexes take. Digits is a Split with a pattern nanollm writes: tokenizers
matches each numeric character alone and joins adjacent ones (Contiguous), which is Isolated with ``\\p{N}+``.

Sources: huggingface/tokenizers ``pre_tokenizers/{split,digits,byte_level,metaspace,sequence}.rs``.
"""
from __future__ import annotations

import regex

from .byte_level import GPT2_PATTERN, compile_pattern, compile_regex
from .errors import Place, get
from .guards import TimedPattern

BEHAVIORS = ("Isolated", "Contiguous", "Removed", "MergedWithPrevious", "MergedWithNext")


def split_words(pattern: TimedPattern, text: str) -> list[str]:
    """The words a pre-tokenizer regex makes of ``text``: each match, and each run of text between two matches.

    That is tokenizers' Split with behavior "Isolated". tiktoken keeps only the matches, silently dropping text that
    no alternative matches; the two agree for every pattern that matches all text, as all of tiktoken's and
    ``byte_level.NAMED_PATTERNS`` do. Those take the first line: when the matches' lengths add up to the text's, the
    matches are the whole text (they come in order and never overlap) and nothing needs to be filled in.

    Example: pattern "a", text "bab" -> ["b", "a", "b"]  (tiktoken: ["a"]).

    A pattern with capturing groups (a tokenizer.json's Split may have them) skips the first line: findall would
    return the groups' text instead of the whole matches.
    """
    if not pattern.groups:
        words = pattern.findall(text)
        if sum(map(len, words)) == len(text):
            return words
    return [text[start:end] for start, end, _ in _spans(pattern, text)]


def cut(text: str, pattern: TimedPattern, behavior: str) -> tuple[list[str], bool]:
    """tokenizers' split of ``text`` at the matches of ``pattern``, with one of the ``BEHAVIORS`` (module docstring)
    -> (the non-empty pieces, whether the first of them begins at offset 0: false only when Removed dropped a match
    there)."""
    if behavior == "Isolated":
        return split_words(pattern, text), True
    spans = [(start, end) for start, end, _ in _fold(_spans(pattern, text), behavior) if end > start]
    return [text[start:end] for start, end in spans], not spans or spans[0][0] == 0


def _spans(pattern: TimedPattern, text: str) -> list[tuple[int, int, bool]]:
    """The text as consecutive (start, end, is_match) spans: each match, and the text before, between and after.

    "a-b" cut at "-" -> [(0, 1, False), (1, 2, True), (2, 3, False)]
    """
    spans, previous = [], 0
    for match in pattern.finditer(text):
        start, end = match.span()
        if start > previous:
            spans.append((previous, start, False))
        spans.append((start, end, True))
        previous = end
    if previous < len(text):
        spans.append((previous, len(text), False))
    return spans


def _fold(spans: list[tuple[int, int, bool]], behavior: str) -> list[tuple[int, int, bool]]:
    """Join spans as ``behavior`` says: Removed drops the matches; Contiguous joins a run of adjacent matches;
    MergedWithPrevious joins a match to the span before it, MergedWithNext to the span after it (found by walking
    backwards). A match following another match stays alone in the last two, as in tokenizers."""
    if behavior == "Removed":
        return [span for span in spans if not span[2]]
    backwards = behavior == "MergedWithNext"
    joined: list[list] = []
    previous_match = False
    for start, end, is_match in reversed(spans) if backwards else spans:
        if behavior == "Contiguous":
            join = is_match == previous_match
        else:
            join = is_match and not previous_match
        if join and joined:
            if backwards:
                joined[-1][0] = start
            else:
                joined[-1][1] = end
        else:
            joined.append([start, end, False])
        previous_match = is_match
    return [tuple(span) for span in (reversed(joined) if backwards else joined)]


# -- the steps ------------------------------------------------------------------------------------------------------


class Split:
    """Cut each piece at the matches of ``pattern`` (a compiled ``TimedPattern``), keeping them as ``behavior`` says."""

    def __init__(self, pattern: TimedPattern, behavior: str = "Isolated"):
        self.pattern = pattern
        self.behavior = behavior

    def cut(self, piece: str, starts_text: bool) -> tuple[list[str], bool]:
        return cut(piece, self.pattern, self.behavior)


class ByteLevel:
    """GPT-2's pre-tokenization: a space before a piece that lacks one (``add_prefix_space``), then ``pattern``
    (GPT-2's regex; None when the file says use_regex false)."""

    def __init__(self, add_prefix_space: bool, pattern: TimedPattern | None):
        self.add_prefix_space = add_prefix_space
        self.pattern = pattern

    def cut(self, piece: str, starts_text: bool) -> tuple[list[str], bool]:
        if self.add_prefix_space and not piece.startswith(" "):
            piece = " " + piece
        return (split_words(self.pattern, piece) if self.pattern else [piece]), True


class Metaspace:
    """SentencePiece's spaces: " " -> ``replacement`` ("▁"), a leading one added by ``prepend_scheme``, and with
    ``split`` a cut before each one."""

    def __init__(self, replacement: str, prepend_scheme: str, split: bool):
        self.replacement = replacement
        self.prepend_scheme = prepend_scheme
        self.split = Split(_literal(replacement), "MergedWithNext") if split else None

    def cut(self, piece: str, starts_text: bool) -> tuple[list[str], bool]:
        piece = piece.replace(" ", self.replacement)
        prepend = self.prepend_scheme == "always" or (self.prepend_scheme == "first" and starts_text)
        if prepend and not piece.startswith(self.replacement):
            piece = self.replacement + piece
        return self.split.cut(piece, starts_text) if self.split else ([piece], True)


def digits(individual_digits: bool) -> Split:
    """tokenizers' Digits: every numeric character alone, or each run of them as one piece (module docstring)."""
    return Split(TimedPattern(regex.compile(r"\p{N}" if individual_digits else r"\p{N}+"), "Digits", limited=False))


def _literal(text: str) -> TimedPattern:
    """A pattern matching ``text`` literally: escaped, it cannot backtrack, so it runs without the time limit."""
    return TimedPattern(regex.compile(regex.escape(text)), f"the literal {text!r}", limited=False)


class PreTokenizer:
    """The steps of one pre-tokenizer, in order: ``words(text, at_start)`` -> the pieces BPE merges inside.

    ``at_start``: whether ``text`` begins the input (it is not a segment after a special token). Example, with
    [Digits(individual_digits=True), ByteLevel(add_prefix_space=False, GPT-2's regex)]:

        "take 12 eggs" -> Digits ["take ", "1", "2", " eggs"] -> ByteLevel ["take", " ", "1", "2", " eggs"]

    (GPT-2's regex alone makes ["take", " 12", " eggs"]: the space before "12" joins it only when Digits does not
    cut the two apart first.)
    """

    def __init__(self, steps: list):
        self.steps = steps

    def words(self, text: str, at_start: bool = True) -> list[str]:
        if len(self.steps) == 1 and isinstance(self.steps[0], Split):  # one regex (tiktoken, GPT-2, Llama 3, Qwen)
            return self.steps[0].cut(text, at_start)[0]
        pieces = [text] if text else []
        for step in self.steps:
            out: list[str] = []
            for k, piece in enumerate(pieces):
                cut_pieces, from_zero = step.cut(piece, at_start and k == 0)
                if k == 0:
                    at_start = at_start and from_zero and any(cut_pieces)
                out += filter(None, cut_pieces)  # tokenizers drops empty pieces after every step
            pieces = out
        return pieces


def regex_pre_tokenizer(pattern: str, origin: str) -> PreTokenizer:
    """The pre-tokenizer of tiktoken, GPT-2's own files and nanollm's files: one regex, Isolated (``split_words``)."""
    return PreTokenizer([Split(compile_pattern(pattern, origin))])


# -- reading them from tokenizer.json -------------------------------------------------------------------------------


def pattern_of(step: dict, place: Place) -> tuple[str, bool, Place]:
    """tokenizers' {"String": s} or {"Regex": r} -> (text, is_regex, its place)."""
    pattern = get(step, "pattern", dict, place)
    if len(pattern) != 1 or not pattern.keys() <= {"String", "Regex"}:
        raise place["pattern"].error('must be {"String": text} or {"Regex": pattern}')
    key = next(iter(pattern))
    return get(pattern, key, str, place["pattern"]), key == "Regex", place["pattern"][key]


def read_step(step: dict, place: Place):
    """One pre-tokenizer of a tokenizer.json as a step object; anything else is refused naming its type."""
    kind = step["type"]
    if kind == "Split":
        behavior, invert = get(step, "behavior", str, place), get(step, "invert", bool, place, False)
        if behavior not in BEHAVIORS or invert:
            raise place.error(f"has behavior={behavior!r}, invert={invert}; supported are {', '.join(BEHAVIORS)}, "
                              f"not inverted")
        text, is_regex, at = pattern_of(step, place)
        return Split(compile_regex(text, str(at)) if is_regex else _literal(text), behavior)
    if kind == "Digits":
        return digits(get(step, "individual_digits", bool, place, False))
    if kind == "ByteLevel":
        add_prefix_space = get(step, "add_prefix_space", bool, place)
        get(step, "trim_offsets", bool, place)  # offsets only: no effect on ids
        use_regex = get(step, "use_regex", bool, place, True)
        return ByteLevel(add_prefix_space, compile_regex(GPT2_PATTERN, f"{place} (GPT-2's pattern)") if use_regex
                         else None)
    if kind == "Metaspace":
        settings = metaspace_settings(step, place)
        return Metaspace(settings["replacement"], settings["prepend_scheme"], settings["split"])
    raise place["type"].error(f"is {kind!r}, a pre-tokenizer nanollm does not support (it supports Split, Digits, "
                              f"ByteLevel and Metaspace)")


def metaspace_settings(step: dict, place: Place) -> dict:
    """A Metaspace pre-tokenizer or decoder: {"replacement": "▁", "prepend_scheme": ..., "split": ...}, checked.
    Files from tokenizers < 0.14 say ``add_prefix_space`` (true = "always") instead of ``prepend_scheme``."""
    replacement = get(step, "replacement", str, place)
    if len(replacement) != 1:
        raise place["replacement"].error(f"must be one character, not {replacement!r}")
    if "prepend_scheme" in step:
        scheme = get(step, "prepend_scheme", str, place)
        if scheme not in ("always", "first", "never"):
            raise place["prepend_scheme"].error(f"must be 'always', 'first' or 'never', not {scheme!r}")
    else:
        scheme = "always" if get(step, "add_prefix_space", bool, place, True) else "never"
    return {"replacement": replacement, "prepend_scheme": scheme, "split": get(step, "split", bool, place, True)}


def check_order(steps: list[tuple[dict, Place]]) -> str:
    """Which pipeline these pre-tokenizers make: "byte_level" (ByteLevel last, only Split and Digits before it) or
    "pieces" (no ByteLevel: a SentencePiece-style BPE over characters, at most one Metaspace). Other orders are
    refused naming the step: after ByteLevel the text is bytes shown as characters, which no later step expects."""
    kinds = [step["type"] for step, _ in steps]
    if "ByteLevel" not in kinds:
        if kinds.count("Metaspace") > 1:
            second = [at for step, at in steps if step["type"] == "Metaspace"][1]
            raise second.error("is a second Metaspace pre-tokenizer; nanollm supports one")
        return "pieces"
    for step, at in steps[:-1]:
        if step["type"] not in ("Split", "Digits"):
            raise at["type"].error(f"is {step['type']!r}; ByteLevel must be the last pre-tokenizer, with only Split "
                                   f"and Digits before it")
    byte_level, place = steps[-1]
    if byte_level["type"] != "ByteLevel":
        raise place["type"].error(f"is {byte_level['type']!r}: ByteLevel must be the last pre-tokenizer")
    if len(steps) == 1 and not get(byte_level, "use_regex", bool, place, True):
        raise place.error("has use_regex false and no Split before it: nothing splits the text into words")
    return "byte_level"


def read_pre_tokenizer(steps: list[tuple[dict, Place]]) -> PreTokenizer:
    """The pre-tokenizer steps of a tokenizer.json (a Sequence already flattened), read and checked. A ByteLevel step
    with neither a prefix space nor a regex cuts nothing (Llama 3's and Qwen's, after their Split), so it is left out:
    the words then come from the Split alone, by the fast path."""
    read = [read_step(step, place) for step, place in steps]
    return PreTokenizer([step for step in read
                         if not (isinstance(step, ByteLevel) and not step.add_prefix_space and step.pattern is None)])

