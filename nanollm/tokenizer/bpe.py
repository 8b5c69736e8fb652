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
and remembers the result in a ``WordCache``. A word may still be huge ("x" * 1_000_000 is one regex word): merging
costs O(n log n) (``heap_merge``), and runs of few kinds of pair go round by round in C (``merge_in_rounds``).

Sources: Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"; tiktoken's
``_educational.py`` (the scan) and sentencepiece's ``bpe_model.cc`` (the heap with lazily discarded stale entries).
"""
from __future__ import annotations

import heapq
import sys
from itertools import chain, pairwise
from operator import itemgetter
from typing import Callable, Hashable, Sequence, TypeVar

Symbol = TypeVar("Symbol", bytes, str)
WORD_CACHE_LIMIT = 100_000  # words; a word and its ids take ~200 bytes, so a full cache holds ~20 MB
ROUNDS_MIN_SYMBOLS = 256  # inputs at least this long try merge_in_rounds first (measured: see make bench-tokenizer)
ROUND_CHARS_PER_MERGE = 1000  # a round may read this many characters per merge it makes (~ one heap merge's cost)
FREE_ROUNDS = 4  # rounds' worth of reading allowed before the rounds must pay for themselves
SEARCHED_CHARACTERS_MAX = 8  # a string with at most 8 distinct characters finds its pairs by search (_pairs_present)


def bpe_merge(symbols: Sequence[Symbol], pair_ranks: dict[tuple[Hashable, Hashable], float]) -> list[Symbol]:
    """Merge ``symbols`` by ``pair_ranks`` until no adjacent pair has a rank; return the final symbols.

    Worked example, with ranks {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}:

        ["a", "b", "c", "a", "b"] -> ["ab", "c", "ab"]    (a b at positions 0 and 3 both rank 0: leftmost first,
                                  -> ["abc", "ab"]           then the other; then ("ab", "c") ranks 1)

    ``heap_merge`` does the merging one pair at a time. A long input (``ROUNDS_MIN_SYMBOLS`` symbols or more: a run
    of one character, a line of dashes, a page of whitespace) first goes through ``merge_in_rounds``, which does
    whole rounds of identical merges at once and hands ``heap_merge`` what is left, if anything is.
    """
    if len(symbols) >= ROUNDS_MIN_SYMBOLS:
        symbols, finished = merge_in_rounds(symbols, pair_ranks)
        if finished:
            return symbols
    return heap_merge(symbols, pair_ranks)


def heap_merge(symbols: Sequence[Symbol], pair_ranks: dict[tuple[Hashable, Hashable], float]) -> list[Symbol]:
    """``bpe_merge`` one merge at a time, in O(n log n) for n symbols.

    The symbols are kept in a doubly linked list so a merge is O(1), and every candidate pair sits in a heap keyed by
    (rank, left position). A merge makes the entries that mention the two old symbols stale; rather than search the
    heap for them we leave them there and discard them when they surface (the check below). That makes a word of n
    symbols cost O(n log n) instead of the O(n^2) of rescanning all pairs after each merge (tiktoken's
    ``_educational.py``), which matters for inputs such as a 10,000-character run of one letter.
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


def merge_in_rounds(symbols: Sequence[Symbol], pair_ranks: dict) -> tuple[list[Symbol], bool]:
    """``merge_codes_in_rounds`` on a list of symbols: each distinct symbol becomes one character of a string, in
    order of first appearance. Returns the symbols after the rounds, and whether merging is finished."""
    symbol_of = list(dict.fromkeys(symbols))  # code -> symbol: the k-th distinct symbol is the character chr(k)
    code_of = {symbol: chr(code) for code, symbol in enumerate(symbol_of)}
    codes, finished = merge_codes_in_rounds("".join(map(code_of.__getitem__, symbols)), symbol_of, pair_ranks)
    return [symbol_of[ord(code)] for code in codes], finished


def merge_codes_in_rounds(codes: str, symbol_of: list, pair_ranks: dict) -> tuple[str, bool]:
    """Do the first merges of ``heap_merge`` a whole round at a time, on symbols written as a string: the character
    chr(k) stands for ``symbol_of[k]``, and each new symbol a round makes is appended to ``symbol_of``. Returns the
    string as it stands after the rounds, and whether merging is finished (no ranked pair is left for ``heap_merge``).

    Why: ``heap_merge`` pays about a microsecond of Python per merge, and "x" * 1_000_000 needs 875,000 merges (3.6 s;
    tiktoken takes 0.3 s). But such inputs hold few kinds of pair: there, "merge every (x, x) left to right" is one
    ``str.split`` and one ``str.join``, done in C. So a round takes the best-ranked pair present and merges all of it
    at once:

        x x x x x x x x  -> (x, x):   xx xx xx xx  -> (xx, xx):  xxxx xxxx  -> (xxxx, xxxx):  xxxxxxxx

    When is a round exactly what ``heap_merge`` does? Its next merge is the leftmost pair of the lowest rank r; each
    merge can only create pairs with its new symbol, and while those all rank above r, the next merge is again the
    leftmost pair of rank r still standing. That is "replace every (a, b) left to right, skipping overlaps", which
    is ``str.split`` then ``str.join``. So a round is taken only when (1) no other kind of pair present has rank r
    (ties between kinds are ordered by position, which a round does not see) and (2) every pair it creates ranks above
    r; it is checked after the split, and a round that fails the check is dropped, to be done by ``heap_merge``.

    Cost: a round reads the whole string, a few nanoseconds a character, however few pairs it merges. When rounds
    merge too few pairs for what they read (on random letters: thousands of kinds of pair, a few hundred each), the
    rest is left to ``heap_merge``: rounds continue while they merge on average one pair for every
    ``ROUND_CHARS_PER_MERGE`` characters they read, after ``FREE_ROUNDS`` rounds' worth of reading. When no ranked
    pair is left at all (a megabyte of spaces, which GPT-2 never merges), the string is the answer as it stands, and
    the caller skips ``heap_merge``'s pass over a million symbols.
    """
    code_of = {symbol: chr(code) for code, symbol in enumerate(symbol_of)}

    def rank_of(pair: str):
        return pair_ranks.get((symbol_of[ord(pair[0])], symbol_of[ord(pair[1])]))

    # The kinds of pair present, best rank first. Invariant: every kind present is in the heap (kinds that were
    # merged away stay there, stale, and are dropped when a split finds none of them).
    heap = [(rank, pair) for pair in _pairs_present(codes, rank_of) if (rank := rank_of(pair)) is not None]
    heapq.heapify(heap)
    budget = FREE_ROUNDS * len(codes)  # characters the rounds may still read
    while heap:
        rank, pair = heapq.heappop(heap)
        if budget <= 0 or (heap and heap[0][0] == rank):
            return codes, False  # the rounds no longer pay, or another kind of pair has the same rank: (1)
        merged = symbol_of[ord(pair[0])] + symbol_of[ord(pair[1])]
        code = code_of.get(merged)
        if code is None:
            if len(symbol_of) > sys.maxunicode:
                return codes, False  # no character left to stand for a new symbol
            code = code_of[merged] = chr(len(symbol_of))
            symbol_of.append(merged)
        pieces = codes.split(pair)  # the text between the occurrences, left to right, without overlaps
        merges = len(pieces) - 1
        budget += ROUND_CHARS_PER_MERGE * merges - len(codes)
        if not merges:
            continue  # stale: merged away by earlier rounds
        created = [(new_rank, new_pair) for new_pair in _created_pairs(pieces, pair, code)
                   if (new_rank := rank_of(new_pair)) is not None]
        if any(new_rank <= rank for new_rank, _ in created):
            return codes, False  # (2): this round is not what heap_merge would do
        for entry in created:
            heapq.heappush(heap, entry)
        codes = code.join(pieces)
    return codes, True


def _pairs_present(codes: str, rank_of: Callable[[str], float | None]) -> set[str]:
    """The distinct adjacent pairs of ``codes`` (as 2-character strings), or at least those that ``rank_of`` ranks.

    A pass over the pairs costs ~70 ns a character in Python; a substring search (``in``, in C) reads at ~1 ns a
    character and stops at the first occurrence. So when the string has few distinct characters (a megabyte of mixed
    whitespace: 3, so 9 candidate pairs) each ranked candidate is searched for instead: at most
    ``SEARCHED_CHARACTERS_MAX`` squared reads, no more than the one pass, and usually far less, as pairs present are
    found at once.
    """
    chars = distinct_characters(codes, SEARCHED_CHARACTERS_MAX)
    if chars is None:
        return {a + b for a, b in pairwise(codes)}
    return {pair for a in chars for b in chars if rank_of(pair := a + b) is not None and pair in codes}


def distinct_characters(text: str, limit: int) -> set[str] | None:
    """The distinct characters of ``text`` if there are at most ``limit`` of them, else None: "abba", 2 -> {"a", "b"};
    "abc", 2 -> None.

    Why not ``set(text)``: that reads a megabyte a character at a time, ~10 ms. Deleting one character everywhere
    (``str.replace``, in C) takes ~1 ms, so a string of few kinds of character (a megabyte of spaces: 1) is done in
    as few passes, and one of many stops after ``limit`` passes, each on a shorter string.
    """
    chars = set()
    while text:
        if len(chars) == limit:
            return None
        chars.add(text[0])
        text = text.replace(text[0], "")
    return chars


def _created_pairs(pieces: list[str], pair: str, code: str) -> set[str]:
    """The pairs (as 2-character strings) that ``heap_merge`` creates while it merges, left to right, each ``pair``
    between two of ``pieces`` into ``code``.

    Each merge pairs ``code`` with its left neighbour as it stands then (already merged: the end of the piece before,
    or ``code`` when that piece is empty) and with its right neighbour as it stands then (not yet merged: the start of
    the piece after, or ``pair[0]`` when that piece is empty and another occurrence follows). Example: "xxxx" split at
    "xx" is ["", "", ""]: merging makes "XX", and for a moment "Xx" (before the second merge), so a rank for (xx, x)
    below (x, x)'s must stop the round: heap_merge would make "xxx" first.
    """
    created = {piece[-1] + code for piece in pieces[:-1] if piece} | {code + piece[0] for piece in pieces[1:] if piece}
    if "" in pieces[1:-1]:
        created |= {code + code, code + pair[0]}
    return created


def edge_symbols(symbols: Sequence[Symbol], pair_ranks: dict) -> tuple[set[Symbol], set[Symbol]]:
    """The symbols that are first, and those that are last, at some moment while ``symbols`` merge.

    Example, with ranks {("a", "b"): 0, ("ab", "c"): 1}: "abc" merges a b c -> ab c -> abc, so the first symbol is
    in turn a, ab, abc and the last c, c, abc: ({"a", "ab", "abc"}, {"c", "abc"}).

    ``TokenBoundaries`` asks this of single tokens, which are short, so the textbook loop serves (merge
    the best pair, leftmost among equals, and look again: tiktoken's ``_educational.py``); it merges as
    ``heap_merge`` does.
    """
    parts = list(symbols)
    first, last = {parts[0]}, {parts[-1]}
    while len(parts) > 1:
        ranked = [(rank, i) for i, pair in enumerate(pairwise(parts)) if (rank := pair_ranks.get(pair)) is not None]
        if not ranked:
            break
        _, i = min(ranked)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        first.add(parts[0])
        last.add(parts[-1])
    return first, last


def pair_partners(pair_ranks: dict) -> dict:
    """left symbol -> the right symbols it has a ranked pair with: {("a", "b"): 0, ("a", "c"): 1} -> {"a": ["b", "c"]}.
    """
    partners: dict = {}
    for left, right in pair_ranks:
        partners.setdefault(left, []).append(right)
    return partners


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


class TokenBoundaries:
    """Whether two parts of a word, each merged alone, are also what merging the word would make of them.

    Why: text in Chinese, Japanese or emoji meets a byte-level tokenizer as words of characters of 3-4 bytes each,
    mostly never seen before as whole words (the bench's corpus: 1,880 such words, 116 KB, 78 ms of ``heap_merge``
    for cl100k where tiktoken encodes the whole megabyte in 64 ms). Its characters repeat, though: there are ~500 of
    them. So ``ByteLevelBPE`` merges each character alone, once (a cache), puts the characters' tokens side by side,
    and asks here whether the merge of the whole word could differ.

    When can it? Take two parts side by side, whose merges alone end in tokens ..., S and T, ... Merging the two
    parts together does exactly their merges alone until the first merge across the boundary: each merge is the best
    pair of the whole, so the best of its own part, the merge the part alone makes next (and, since symbols only grow,
    the merges that make S are those of S's own bytes merged alone). Until then the symbol just left of the boundary
    is one of the last symbols of S's own merge, and the one right of it one of the first of T's
    (``edge_symbols``). So if no such pair has a rank, no merge ever crosses, and the parts' tokens are the word's.
    With ~0.1% of the boundaries of the bench's CJK text failing this for cl100k (1% for GPT-2), most words are their
    characters' tokens; a word that fails it is merged again in fewer, larger parts (``ByteLevelBPE``).

    Each token's two sets are worked out once: the symbols on its left edge, and every symbol that some symbol on its
    right edge has a ranked pair with (from ``pair_partners``, made at load: 0.07 s for cl100k's 233,000 pairs),
    so that a boundary costs one ``frozenset.isdisjoint`` in C.
    """

    def __init__(self, token_ids: dict, pair_ranks: dict):
        self._pair_ranks = pair_ranks
        self._token_of = {token_id: token for token, token_id in token_ids.items()}
        self._partners = pair_partners(pair_ranks)
        self._left_edge = WordCache(self._left_edge_of)  # token id -> the symbols first while it merges
        self._joins_right = WordCache(self._joins_right_of)  # token id -> the symbols a right-edge symbol pairs with

    def apart(self, part_ids: list[tuple[int, ...]]) -> list[bool]:
        """For each boundary between two parts (given as their ids, merged alone): True where no merge can cross it.
        """
        lasts = map(self._joins_right.__getitem__, map(itemgetter(-1), part_ids[:-1]))
        firsts = map(self._left_edge.__getitem__, map(itemgetter(0), part_ids[1:]))
        return list(map(frozenset.isdisjoint, lasts, firsts))

    def merge(self, parts: list[str], part_ids: Callable[[str], tuple[int, ...]]) -> tuple[int, ...] | None:
        """The ids of the word that ``parts`` make, from each part's own (``part_ids``: the part merged alone), if no
        merge can cross between two parts; where one can, the parts on both sides are joined, merged as one and asked
        again. None when that fails too: the caller merges the word whole, so a word costs at most ~3 merges."""
        for _ in range(2):
            ids = list(map(part_ids, parts))
            apart = self.apart(ids)
            if all(apart):
                return tuple(chain.from_iterable(ids))
            parts = _join(parts, apart)
        return None

    def _edges(self, token_id: int) -> tuple[set, set]:
        token = self._token_of[token_id]
        return edge_symbols([token[i : i + 1] for i in range(len(token))], self._pair_ranks)  # bytes or characters

    def _left_edge_of(self, token_id: int) -> frozenset:
        return frozenset(self._edges(token_id)[0])

    def _joins_right_of(self, token_id: int) -> frozenset:
        return frozenset(chain.from_iterable(self._partners.get(symbol, ()) for symbol in self._edges(token_id)[1]))


def _join(parts: list[str], apart: list[bool]) -> list[str]:
    """Join each two neighbours not ``apart``: ["a", "b", "c", "d"], [True, False, True] -> ["a", "bc", "d"]."""
    joined = [parts[0]]
    for part, cut in zip(parts[1:], apart):
        if cut:
            joined.append(part)
        else:
            joined[-1] += part
    return joined


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
