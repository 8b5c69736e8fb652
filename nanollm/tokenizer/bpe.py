"""The one BPE merge algorithm that every tokenizer format in nanollm uses.

Byte-pair encoding splits a word into its smallest symbols (bytes for GPT-2 style tokenizers, characters for
SentencePiece) and then, again and again, joins the adjacent pair that the vocabulary ranks best, until no adjacent
pair can be joined. The formats differ only in what a "rank" is:

    GPT-2 merges.txt / tokenizer.json merges   rank = line number of the merge "a b"    (lower merges first)
    tiktoken ranks (cl100k, Llama 3)           rank = rank of the token a+b              (lower merges first)
    SentencePiece BPE                          rank = -score of the piece a+b            (higher score merges first)

Each loader turns its format into one table, ``pair_ranks[(a, b)] -> rank``, and ``bpe_merge`` does the rest. When
two pairs share the best rank, the leftmost merges first: that is what tiktoken (a left-to-right scan), Hugging Face
``tokenizers`` (a heap ordered by (rank, position)) and sentencepiece (a heap ordered by (score, position)) all do.

Merging is the slow part of encoding, and text repeats its words constantly, so every model merges each word once
and remembers the result in a ``WordCache``.

Sources: Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"; tiktoken's
``_educational.py`` (the scan) and sentencepiece's ``bpe_model.cc`` (the heap with lazily discarded stale entries).
"""
from __future__ import annotations

import heapq
from typing import Callable, Hashable, Sequence, TypeVar

Symbol = TypeVar("Symbol", bytes, str)
WORD_CACHE_LIMIT = 100_000  # words; a word and its ids take ~200 bytes, so a full cache holds ~20 MB


def bpe_merge(symbols: Sequence[Symbol], pair_ranks: dict[tuple[Hashable, Hashable], float]) -> list[Symbol]:
    """Merge ``symbols`` by ``pair_ranks`` until no adjacent pair has a rank; return the final symbols.

    Worked example, with ranks {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}:

        ["a", "b", "c", "a", "b"] -> ["ab", "c", "ab"]    (a b at positions 0 and 3 both rank 0: leftmost first,
                                  -> ["abc", "ab"]           then the other; then ("ab", "c") ranks 1)

    The symbols are kept in a doubly linked list so a merge is O(1), and every candidate pair sits in a heap keyed by
    (rank, left position). A merge makes the entries that mention the two old symbols stale; rather than search the
    heap for them we leave them there and discard them when they surface (the check below). That makes a word of n
    symbols cost O(n log n) instead of the O(n^2) of rescanning all pairs after each merge, which matters for inputs
    such as a 10,000-character run of one letter.
    """
    n = len(symbols)
    if n < 2:
        return list(symbols)
    parts: list = list(symbols)  # parts[i] is None once symbol i has been merged into its left neighbour
    next_of = list(range(1, n + 1))  # next_of[i] == n means "no right neighbour"
    prev_of = list(range(-1, n - 1))  # prev_of[i] == -1 means "no left neighbour"

    # Heap entries: (rank, left index, combined length). The length lets us recognise a stale entry: symbols only
    # ever grow, so if either side has grown since the entry was pushed, the two lengths no longer add up.
    heap = []
    for i in range(n - 1):
        rank = pair_ranks.get((parts[i], parts[i + 1]))
        if rank is not None:
            heap.append((rank, i, len(parts[i]) + len(parts[i + 1])))
    heapq.heapify(heap)

    while heap:
        _, left, size = heapq.heappop(heap)
        right = next_of[left]
        if parts[left] is None or right == n or len(parts[left]) + len(parts[right]) != size:
            continue  # stale: one side was merged away or grew after this entry was pushed
        merged = parts[left] + parts[right]
        parts[left] = merged
        parts[right] = None
        after = next_of[right]
        next_of[left] = after
        if after != n:
            prev_of[after] = left
        # The merged symbol has new neighbours on both sides: offer those two pairs.
        before = prev_of[left]
        if before != -1:
            rank = pair_ranks.get((parts[before], merged))
            if rank is not None:
                heapq.heappush(heap, (rank, before, len(parts[before]) + len(merged)))
        if after != n:
            rank = pair_ranks.get((merged, parts[after]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, len(merged) + len(parts[after])))

    return [part for part in parts if part is not None]


def pair_ranks_from_token_ranks(token_ranks: dict) -> dict:
    """Turn "rank of the token a+b" (tiktoken's and SentencePiece's rule) into a pair table for ``bpe_merge``.

    During merging every symbol is either an atom (a single byte or character) or a token that some merge produced,
    so the only pairs that can ever be looked up are splits of a token into two parts that are each a token or an
    atom. We enumerate exactly those once, at load time: for each token t and each cut point k, if t[:k] and t[k:]
    can both be symbols, then pair (t[:k], t[k:]) gets t's rank.

    Example: token_ranks={b"a": 0, b"b": 1, b"ab": 2, b"abb": 3} -> {(b"a", b"b"): 2, (b"ab", b"b"): 3}
    (the cut (b"a", b"bb") is absent because b"bb" is neither a token nor a single byte). A single character counts
    as a symbol even when it is not a token: SentencePiece starts from characters, known or not.
    """
    pairs = {}
    for token, rank in token_ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if (len(left) == 1 or left in token_ranks) and (len(right) == 1 or right in token_ranks):
                pairs[(left, right)] = rank
    return pairs


class WordCache(dict):
    """word -> its ids, filled on first sight: ``cache[word]`` runs ``encode_word(word)`` only for a word it has not
    seen, so a word met again costs one dictionary lookup instead of a ``bpe_merge``.

    Bounded, because the words come from the user: text that never repeats a word (random strings, a long list of
    numbers) would otherwise grow the cache without end. At ``WORD_CACHE_LIMIT`` entries it is emptied and starts
    over. Emptying all at once, rather than evicting the oldest word (an LRU), keeps a hit a plain dict lookup with no
    bookkeeping, which is the cost that matters; the common words are back after a few lines of text. (Hugging Face
    tokenizers bounds its BPE cache too, at 10,000 words, but stops adding when full: ``utils/cache.rs``. Here a text
    whose vocabulary changes halfway, a second language, gets a cache of its own words.)
    """

    def __init__(self, encode_word: Callable[[str], tuple[int, ...]]):
        super().__init__()
        self.encode_word = encode_word

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self) >= WORD_CACHE_LIMIT:
            self.clear()
        ids = self[word] = self.encode_word(word)
        return ids
