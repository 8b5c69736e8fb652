"""Long words of many distinct characters (a megabyte of random letters is one regex word): cut where no token
spans (``SpanFreeCuts``), and the distinct parts merged all together, in NumPy (``merge_together``).

``bpe.heap_merge`` merges one pair at a time and pays about a microsecond of Python for each. Cut where no token
spans, GPT-2's 1 MB random-letter word is ~84,000 distinct parts of ~11 bytes, which need ~390,000 merges: 0.71 s one
part at a time, where tiktoken encodes the whole word in ~0.3 s.

But the parts do not interact, and each one's next merge is simply its best-ranked pair, leftmost among equals. So
all the parts can take that step together, on one array of every part's symbols laid end to end:

    symbols   t  h  e  | c  a  t  | o  n     three words end to end (no pair across a "|")
    ranks     2  9  -  | 7  4  -  | 5  -     each symbol's rank with its right neighbour ("-": none)
    merge     ^        |    ^     | ^        per word: the lowest rank, the leftmost pair that has it
    symbols   th e     | c  at    | on       one merge per word, all in one step

and repeat, with the two ranks beside each merge looked up again, until no word has a ranked pair. A word leaves
the arrays once it is finished, so the steps shrink as they go. Each word does exactly the merges ``heap_merge``
does, in the same order (the textbook loop: best pair, leftmost first, look again), so the ids are the same.

The lowest rank and its leftmost position come out of one pass: the smallest of rank * N + position in each word
(``np.minimum.reduceat``). The number of steps is the number of merges of the longest word, each costing a few
passes over what is left: this is for many short words (``MAX_SYMBOLS``), not one long one.
"""
from __future__ import annotations

from itertools import compress, repeat
from operator import itemgetter

import numpy as np

from .bpe import WordCache

MAX_SYMBOLS = 256  # bytes; longer words keep every step busy for one merge each (64 and 512: no faster on the bench)
NO_RANK = 2**31 - 1  # the rank of a pair that does not merge (after a word's last symbol, or unranked)


class SpanFreeCuts:
    """Where a word can be cut into parts that merge alone: between two characters that no token spans.

    Merging only ever makes tokens of the vocabulary, so a merge can cross the point between two bytes only if some
    token holds the bytes on both sides of it. Where none does, the merges on the left and on the right never meet:
    merging each part alone gives the same symbols as merging the word (each part's merges are the word's merges
    there, in the same order). Cutting there lets a part seen before come from a cache, and keeps each merge run short.

    A cut is decided for each pair of adjacent characters (c1, c2), once, and remembered (``bpe.WordCache``), so a
    word is cut by a loop that runs in C. With u the last byte of c1 and v the first of c2, a token spanning the cut
    is u v itself, or holds the two bytes before the cut and v, or u and the two bytes after it. When c1 is one byte,
    the byte before it is not known from the pair, so any byte counts (likewise after a one-byte c2): a cut is made
    only where no token can span it, whatever surrounds the pair.

    Measured (``make bench-tokenizer``, cl100k): a 1 MB word of random letters is cut every ~38 letters, and merging
    the parts one by one took 1.1 s where merging the word whole took 4.1 s (tiktoken: 0.4-0.6 s); merged all together
    (``merge_together``) they take 0.5 s, 0.2 s of it making the table on first use. Short words are not cut:
    on the bench's corpus the 1,963 words that need merging hold 116 KB and their distinct parts only 21 KB, but
    deciding the 34,000 distinct character pairs cost more than the merging saved (cold encoding 0.19 s, not 0.18).
    """

    def __init__(self, tokens):
        self._tokens = tokens
        self._trigrams = {token[i : i + 3] for token in tokens for i in range(len(token) - 2)}  # 0.06 s for cl100k
        self._after_a_byte = {trigram[1:] for trigram in self._trigrams}  # byte pairs some token has a byte before
        self._before_a_byte = {trigram[:2] for trigram in self._trigrams}  # byte pairs some token has a byte after
        self._cut = WordCache(self._is_cut)  # (c1, c2) -> whether to cut between them

    def parts(self, word: str) -> list[str]:
        """``word`` cut where no token spans: "a日本" -> ["a", "日本"] if no token holds a and 日's first bytes. (zip
        reuses its pair tuple, pairwise does not: a 1 MB word's pairs are decided in 85 ms, not 99.)"""
        cuts = list(compress(range(1, len(word)), map(self._cut.__getitem__, zip(word, word[1:]))))
        return list(map(word.__getitem__, map(slice, [0, *cuts], [*cuts, len(word)])))

    def _is_cut(self, pair: tuple[str, str]) -> bool:
        left, right = pair[0].encode("utf-8"), pair[1].encode("utf-8")
        u_v = left[-1:] + right[:1]
        before = left[-2:] + right[:1] in self._trigrams if len(left) > 1 else u_v in self._after_a_byte
        after = left[-1:] + right[:2] in self._trigrams if len(right) > 1 else u_v in self._before_a_byte
        return not (before or after or u_v in self._tokens)


class PairTable:
    """``pair_ranks`` of byte-level BPE as arrays for ``merge_together``: each token is a symbol number (its position
    in ``token_ids``), and a pair of symbols (left, right) is the key left * n + right (n tokens), sorted, with its rank
    and the symbol it makes alongside.

    ``token_ids``: token bytes -> id; every single byte must be a token. ``pair_ranks``: (bytes, bytes) -> rank, an
    integer; a pair whose sides or whose join is not a token can never be met while merging (every symbol is a byte
    or a join some pair made), so it is left out.
    """

    def __init__(self, token_ids: dict[bytes, int], pair_ranks: dict[tuple[bytes, bytes], int]):
        number = {token: i for i, token in enumerate(token_ids)}
        self.ids = np.array(list(token_ids.values()), dtype=np.int64)  # symbol number -> token id
        self.byte_symbols = np.array([number[bytes([b])] for b in range(256)], dtype=np.int64)
        self.n = n = len(number)
        lefts, rights = list(map(itemgetter(0), pair_ranks)), list(map(itemgetter(1), pair_ranks))

        def numbers(tokens) -> np.ndarray:  # symbol numbers, -1 for what is not a token (map: the loop runs in C)
            return np.fromiter(map(number.get, tokens, repeat(-1)), dtype=np.int64, count=len(lefts))

        left, right, joins = numbers(lefts), numbers(rights), numbers(map(bytes.__add__, lefts, rights))
        ranks = np.fromiter(pair_ranks.values(), dtype=np.int64, count=len(lefts))
        if len(ranks) and not 0 <= ranks.min() <= ranks.max() < NO_RANK:
            raise ValueError(f"PairTable takes ranks from 0 to {NO_RANK - 1}")
        met = (left >= 0) & (right >= 0) & (joins >= 0)
        keys, ranks, joins = left[met] * n + right[met], ranks[met], joins[met]
        order = np.argsort(keys)
        # Sorted, and closed by a key above any pair's, so that a search always lands on an entry to compare.
        self.keys, self.ranks, self.joins = (np.r_[column[order], end] for column, end in
                                             ((keys, np.iinfo(np.int64).max), (ranks, NO_RANK), (joins, -1)))
        # Every word starts as bytes, so the first lookup is of byte pairs: a (256, 256) table answers those at once.
        left, right = np.divmod(np.arange(256 * 256), 256)
        self.byte_pair_ranks, self.byte_pair_joins = (
            table.reshape(256, 256) for table in self.lookup(self.byte_symbols[left], self.byte_symbols[right]))

    def lookup(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each pair of symbol numbers: its rank (``NO_RANK`` if none) and the symbol it makes (-1 if none)."""
        key = left * self.n + right
        at = np.searchsorted(self.keys, key)
        found = self.keys[at] == key
        return np.where(found, self.ranks[at], NO_RANK), np.where(found, self.joins[at], -1)


def merge_together(words: list[bytes], table: PairTable) -> list[tuple[int, ...]]:
    """The ids of each word (bytes, each at most ``MAX_SYMBOLS`` long), merged by ``table``: what ``heap_merge``
    gives each alone."""
    if not words:
        return []
    sizes = np.array([len(word) for word in words], dtype=np.int64)  # (W,) symbols in each word
    if sizes.min() == 0 or sizes.max() > MAX_SYMBOLS:
        raise ValueError(f"merge_together takes non-empty words of at most {MAX_SYMBOLS} bytes")
    data = np.frombuffer(b"".join(words), dtype=np.uint8)  # (N,) every word's bytes, end to end
    n = len(data)
    starts = np.cumsum(sizes) - sizes  # (W,) where each word begins
    word_index = np.arange(len(words))  # (W,) which of ``words`` each word still merging is
    symbols = table.byte_symbols[data]  # (N,)
    following = np.r_[data[1:], 0]  # (N,) the byte after each (after a word's last: masked next)
    ranks = table.byte_pair_ranks[data, following]  # (N,) the rank of each symbol with its right neighbour
    ranks[starts + sizes - 1] = NO_RANK  # a word's last symbol has no right neighbour
    joins = table.byte_pair_joins[data, following]  # (N,) the symbol that pair makes
    positions = np.arange(n)
    finished = []  # (word indices, their sizes, their symbols end to end) as words finish, step by step

    while len(word_index):
        # Each word's merge is its lowest rank, leftmost among equals: the smallest rank * n + position in the word.
        best, at = np.divmod(np.minimum.reduceat(ranks * n + positions[: len(ranks)], starts), n)  # (W,) (W,)
        done = best == NO_RANK  # (W,) words with no ranked pair left
        if done.any():
            done_symbols = np.repeat(done, sizes)  # (N,)
            finished.append((word_index[done], sizes[done], symbols[done_symbols]))
            keep = ~done_symbols
            at, starts, sizes, word_index = at[~done], starts[~done], sizes[~done], word_index[~done]
        else:
            keep = np.ones(len(symbols), dtype=bool)
        symbols[at] = joins[at]
        keep[at + 1] = False  # the right symbol of each merge is now part of the left one
        new_position = np.cumsum(keep) - 1  # (N,) where each kept symbol sits once the rest are dropped
        symbols, ranks, joins = symbols[keep], ranks[keep], joins[keep]
        at, starts, sizes = new_position[at], new_position[starts], sizes - 1

        # The merged symbol's pairs with its new neighbours, right and left, are new: look them up.
        for where, has_pair in ((at, at + 1 < starts + sizes), (at - 1, at > starts)):
            where = where[has_pair]
            ranks[where], joins[where] = table.lookup(symbols[where], symbols[where + 1])
        ranks[at[at + 1 == starts + sizes]] = NO_RANK  # a merged symbol that is now its word's last

    ids = [()] * len(words)
    for word_indices, word_sizes, word_symbols in finished:
        flat = table.ids[word_symbols].tolist()
        for i, end, size in zip(word_indices.tolist(), np.cumsum(word_sizes).tolist(), word_sizes.tolist()):
            ids[i] = tuple(flat[end - size : end])
    return ids
