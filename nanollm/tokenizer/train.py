"""Learning a byte-level BPE from text, the way GPT-2 and GPT-4 tokenizers were trained.

1. Split the text into words with the pre-tokenizer regex and count each distinct word: merges never cross a word
   boundary, so "the" seen 10,000 times is one entry with count 10,000, not 10,000 copies.
2. Start every word as its UTF-8 bytes (ids 0..255).
3. Repeat: count every adjacent pair of ids over all words (weighted by word count); merge the most frequent pair
   everywhere, left to right, into one new id. Ties are broken deterministically: among pairs with the same count,
   the one with the smallest (left id, right id) wins, so training is reproducible and hand-checkable.
4. Stop when the vocabulary (256 bytes + merges + special tokens) reaches ``vocab_size``, or no pair is left.

Worked example (Wikipedia's "aaabdaaabac", a single word; a=97, b=98, c=99, d=100):

    counts (a,a)=4 (a,b)=2 ...      -> merge (97, 97) into 256 "aa"     aa a b d aa a b a c
    counts (256,a)=2 (a,b)=2 ...    -> tie at 2: (97, 98) < (256, 97), merge into 257 "ab"   aa ab d aa ab a c
    counts (256,257)=2 ...          -> merge (256, 257) into 258 "aaab"  aaab d aaab a c

Only the words that contain the chosen pair are re-counted after a merge, which keeps each step proportional to the
text it touches rather than to the whole corpus.

If a merge spells bytes that are already a token (possible when "a"+"bc" and "ab"+"c" are both chosen), the merge
reuses that token's id instead of creating a duplicate, so every token has distinct bytes.

Special tokens take the ids right after the last merge, in the order given. Listing one twice is refused rather than
silently dropped: it is almost always a typo, and numbering both copies would leave an id that stands for nothing.
The pattern must match every character of the text (as the named ones do): ``findall`` skips what no alternative
matches, so a tokenizer trained with such a pattern would drop those characters when encoding.

``on_merge`` is told each merge as it is chosen (``train --verbose`` prints them), so a learner can watch the
vocabulary grow: the demo model's tokenizer, trained on Python's documentation, first learned "  " (two spaces),
"--", " t", " a", "in", "he" (nanollm/demo_model/nanollm_tokenizer.json).

Source: Sennrich et al. 2016; Karpathy's minbpe (regex-split training).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import NamedTuple

from .byte_level import compile_pattern, resolve_pattern
from .errors import TokenizerError
from .saving import BPEMerges


class Merge(NamedTuple):
    """One merge as training learns it: the pair (left, right) becomes new_id, whose bytes are ``token``; the pair
    occurred ``count`` times in the text (words weighted by their counts) when it was chosen.
    Example (the module docstring's): Merge(left=97, right=97, new_id=256, token=b"aa", count=4)."""

    left: int
    right: int
    new_id: int
    token: bytes
    count: int


def train_bpe(
    text: str,
    vocab_size: int,
    *,
    pattern: str = "cl100k",
    special_tokens: tuple[str, ...] = (),
    bos_token: str | None = None,
    eos_token: str | None = None,
    on_merge: Callable[[Merge], None] | None = None,
) -> BPEMerges:
    """Learn merges from ``text`` until the vocabulary has ``vocab_size`` entries (special tokens included).

    Arguments are checked before any work: a bad pattern, a repeated or empty special token, or a BOS/EOS that is not
    among the special tokens raises TokenizerError. ``on_merge``, when given, is called with each ``Merge`` in the
    order learned (the same order as the result's ``merges``).
    """
    _check_special_tokens(special_tokens, bos_token, eos_token)
    if vocab_size < 256 + len(special_tokens):
        raise TokenizerError(f"vocab_size must be at least 256 + {len(special_tokens)} special tokens")
    pattern = resolve_pattern(pattern)
    splitter = compile_pattern(pattern, origin="training")  # runs under guards.py's time limit
    words_in_order = splitter.findall(text)
    _check_pattern_covers(splitter, text, words_in_order)
    word_counts = Counter(words_in_order)
    words = [list(word.encode("utf-8")) for word in word_counts]
    counts = list(word_counts.values())

    pair_counts: Counter = Counter()
    words_with: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        _add_pairs(symbols, counts[index], index, pair_counts, words_with)

    token_bytes = {b: bytes([b]) for b in range(256)}
    id_of_bytes = {v: k for k, v in token_bytes.items()}
    merges: list[tuple[int, int, int]] = []
    target = vocab_size - len(special_tokens)
    while len(token_bytes) < target and pair_counts:
        # Highest count; ties go to the smallest pair of ids (see the module docstring).
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        new_id = id_of_bytes.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes[new_id] = merged
            id_of_bytes[merged] = new_id
        merges.append((best[0], best[1], new_id))
        if on_merge is not None:
            on_merge(Merge(best[0], best[1], new_id, merged, pair_counts[best]))
        for index in list(words_with.pop(best, ())):
            symbols = words[index]
            _add_pairs(symbols, -counts[index], index, pair_counts, words_with)
            words[index] = symbols = _merge_pair(symbols, best, new_id)
            _add_pairs(symbols, counts[index], index, pair_counts, words_with)
        pair_counts.pop(best, None)

    first_special = len(token_bytes)
    specials = {token: first_special + k for k, token in enumerate(special_tokens)}
    return BPEMerges(
        pattern=pattern,
        merges=merges,
        special_tokens=specials,
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos_token=bos_token is not None,
    )


def _check_special_tokens(special_tokens: tuple[str, ...], bos_token: str | None, eos_token: str | None) -> None:
    seen = set()
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise TokenizerError(f"a special token must be a non-empty string, not {token!r}")
        if token in seen:
            raise TokenizerError(f"special token {token!r} is listed twice")
        seen.add(token)
    for role, token in (("bos_token", bos_token), ("eos_token", eos_token)):
        if token is not None and token not in seen:
            raise TokenizerError(f"{role} {token!r} must also be listed in special_tokens")


def _check_pattern_covers(splitter, text: str, words: list[str]) -> None:
    """Refuse a pattern whose matches skip characters of ``text``.

    findall's matches are in order and never overlap, so their lengths add up to len(text) exactly when nothing was
    skipped; only when they do not is it worth walking the matches to name the first character skipped.
    """
    if sum(map(len, words)) == len(text):
        return
    position = 0
    for match in splitter.finditer(text):
        if match.start() != position:
            break
        position = match.end()
    raise TokenizerError(
        f"pattern {splitter.pattern!r} does not match every character of the text (first missed: "
        f"{text[position]!r} at offset {position}); encoding with it would drop such characters"
    )


def _add_pairs(symbols: list[int], weight: int, index: int, pair_counts: Counter, words_with: dict) -> None:
    """Add ``weight`` (negative to remove) to the count of each adjacent pair in one word."""
    for pair in zip(symbols, symbols[1:]):
        pair_counts[pair] += weight
        if weight > 0:
            words_with[pair].add(index)
        elif pair_counts[pair] <= 0:
            del pair_counts[pair]


def _merge_pair(symbols: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair``, left to right: [1, 2, 3, 1, 2], (1, 2), 4 -> [4, 3, 4]."""
    out = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out
