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

Counting every pair again after each merge costs the whole corpus per merge: 21 s for 512 tokens when the text is one
long word (minbpe's taylorswift.txt). So the counts are kept up to date instead. All distinct words lie end to end in
one array of symbols, a linked list, and an index maps each pair to the positions where it starts; a merge visits only
those positions and changes only the counts of the pairs around each (the pair merged, the pair to its left, the pair
to its right, and the two new pairs with the new symbol). The best pair comes from a heap of (-count, pair) entries,
pushed at each change of a count and discarded when they surface with a count that is no longer current. Each merge
then costs what it touches, not the size of the corpus. (HF tokenizers' BPE trainer keeps the same index:
``where_to_update`` in ``models/bpe/trainer.rs``.)

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

import heapq
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
    pairs = _PairIndex(Counter(words_in_order))

    token_bytes = {b: bytes([b]) for b in range(256)}
    id_of_bytes = {v: k for k, v in token_bytes.items()}
    merges: list[tuple[int, int, int]] = []
    target = vocab_size - len(special_tokens)
    while len(token_bytes) < target:
        best = pairs.best()  # highest count; ties go to the smallest pair of ids (see the module docstring)
        if best is None:
            break
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        new_id = id_of_bytes.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes[new_id] = merged
            id_of_bytes[merged] = new_id
        merges.append((best[0], best[1], new_id))
        if on_merge is not None:
            on_merge(Merge(best[0], best[1], new_id, merged, pairs.counts[best]))
        pairs.merge(best, new_id)

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


class _PairIndex:
    """Every distinct word's symbols end to end, with the count of each adjacent pair and where each pair starts.

    ``symbols[p]`` is the symbol at position p (None once merged into its left neighbour); ``next_of``/``prev_of`` link
    the live positions of a word (-1 at its ends, so no pair spans two words); ``weight[p]`` is the count of p's word.
    ``counts[pair]`` is the weighted number of occurrences, overlapping ones included ("aaa" holds (a, a) twice), of
    every pair present; ``where[pair]`` is the set of positions where it starts.

    Example, words {"ab": 2, "b": 1}: symbols [97, 98, 98], next_of [1, -1, -1], counts {(97, 98): 2},
    where {(97, 98): {0}}.
    """

    def __init__(self, word_counts: Counter):
        self.symbols: list[int | None] = []
        self.weight: list[int] = []
        for word, count in word_counts.items():
            data = word.encode("utf-8")
            self.symbols += data
            self.weight += [count] * len(data)
        n = len(self.symbols)
        self.next_of, self.prev_of = list(range(1, n + 1)), list(range(-1, n - 1))
        end = 0
        for word in word_counts:
            start, end = end, end + len(word.encode("utf-8"))
            self.prev_of[start] = -1
            self.next_of[end - 1] = -1
        self.counts: Counter = Counter()
        self.where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for p, q in enumerate(self.next_of):
            if q != -1:
                pair = (self.symbols[p], self.symbols[q])
                self.counts[pair] += self.weight[p]
                self.where[pair].add(p)
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def best(self) -> tuple[int, int] | None:
        """The pair with the highest count, the smallest (left, right) among equals; None when no pair is left."""
        while self.heap:
            negative_count, pair = self.heap[0]
            if self.counts.get(pair) == -negative_count:
                return pair
            heapq.heappop(self.heap)  # stale: the count changed since this entry was pushed
        return None

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        """Replace each occurrence of ``pair`` with ``new_id``, left to right as the words read ([1, 2, 3, 1, 2],
        (1, 2), 4 -> [4, 3, 4]; in "aaa", (a, a) merges once), updating the counts around each."""
        left, right = pair
        for p in sorted(self.where.pop(pair)):
            q = self.next_of[p]
            if self.symbols[p] != left or q == -1 or self.symbols[q] != right:
                continue  # taken by the merge just before it ("aaa": the second (a, a))
            weight, before, after = self.weight[p], self.prev_of[p], self.next_of[q]
            if before != -1:
                self._add((self.symbols[before], left), before, -weight)
            self._add(pair, p, -weight)
            if after != -1:
                self._add((right, self.symbols[after]), q, -weight)
            self.symbols[p], self.symbols[q] = new_id, None
            self.next_of[p] = after
            if after != -1:
                self.prev_of[after] = p
                self._add((new_id, self.symbols[after]), p, weight)
            if before != -1:
                self._add((self.symbols[before], new_id), before, weight)

    def _add(self, pair: tuple[int, int], position: int, weight: int) -> None:
        """Count ``pair`` at ``position`` ``weight`` more times (fewer when negative) and push its new count."""
        count = self.counts[pair] + weight
        if weight > 0:
            self.where[pair].add(position)
        else:
            self.where[pair].discard(position)
        if count > 0:
            self.counts[pair] = count
            heapq.heappush(self.heap, (-count, pair))
        else:
            del self.counts[pair]
