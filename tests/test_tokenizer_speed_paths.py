"""The fast paths of issue 13: merging in rounds, cutting words where no token spans, and training with up-to-date
pair counts. Each must give exactly what the plain algorithm gives: the ids tiktoken gives, the symbols
``heap_merge`` gives, the merges a textbook recount-everything trainer learns."""
import copy
import re
from collections import Counter
from functools import cache
from itertools import pairwise

import pytest
import regex
import tiktoken
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer
from nanollm.tokenizer.bpe import (
    WordCache,
    _join,
    _pairs_present,
    bpe_merge,
    distinct_characters,
    edge_symbols,
    heap_merge,
    merge_in_rounds,
)
from nanollm.tokenizer.byte_level import (
    BYTE_TOKENS,
    CL100K_PATTERN,
    GPT2_PATTERN,
    NAMED_PATTERNS,
    NON_ASCII_PARTS,
    R50K_PATTERN,
    RE_SPELLINGS,
    ByteLevelBPE,
    ShippedPattern,
    bmp_ranges,
    compile_pattern,
    load_tiktoken_ranks,
    resolve_pattern,
)
from nanollm.tokenizer.long_words import MAX_SYMBOLS, PairTable, SpanFreeCuts, merge_together
from nanollm.tokenizer.pre_tokenizers import PreTokenizer
from nanollm.tokenizer.train import train_bpe
from tests.bench.bench_tokenizer import pathological_inputs
from tests.conftest import shared_file

# -- merging in rounds ------------------------------------------------------------------------------------------


def test_rounds_double_a_run():
    """merge_in_rounds' docstring example: (x, x), then (xx, xx), then (xxxx, xxxx), each one round."""
    ranks = {("x", "x"): 0, ("xx", "xx"): 1, ("xxxx", "xxxx"): 2}
    assert merge_in_rounds(list("x" * 8), ranks) == (["xxxxxxxx"], True)
    assert merge_in_rounds(list("x" * 9), ranks) == (["xxxxxxxx", "x"], True)


def test_a_round_that_would_create_a_better_pair_is_not_taken():
    """_created_pairs' example: with (xx, x) ranked above (x, x), heap_merge makes "xxx" right after the first "xx",
    so the round "xxxx" -> "xx xx" would be wrong; it is left to heap_merge, which gives ["xxx", "x"]."""
    ranks = {("x", "x"): 1, ("xx", "x"): 0}
    assert merge_in_rounds(list("xxxx"), ranks) == (list("xxxx"), False)
    assert bpe_merge(list("xxxx"), ranks) == heap_merge(list("xxxx"), ranks) == ["xxx", "x"]


def test_a_tie_between_two_kinds_of_pair_is_left_to_the_heap():
    """(a, b) and (b, c) share rank 0: in "abc" the leftmost wins, which only heap_merge can see."""
    ranks = {("a", "b"): 0, ("b", "c"): 0}
    assert merge_in_rounds(list("abc"), ranks) == (list("abc"), False)
    assert bpe_merge(list("abc"), ranks) == ["ab", "c"]


def test_rounds_say_when_nothing_is_left_for_the_heap():
    """No ranked pair at all (GPT-2 has no token of two spaces): finished before any round. One ranked pair that the
    rounds merge away: finished. A ranked pair the rounds may not take (a tie): not finished."""
    assert merge_in_rounds(list(" " * 300), {("x", "x"): 0}) == (list(" " * 300), True)
    assert merge_in_rounds(list("\n \n\n "), {("\n", "\n"): 0}) == (["\n", " ", "\n\n", " "], True)
    assert merge_in_rounds(list("abcab"), {("a", "b"): 0, ("b", "c"): 0})[1] is False


def test_pairs_are_found_by_search_or_by_a_pass_alike():
    """_pairs_present searches for each ranked pair of a string of few distinct characters, and makes one pass over
    the pairs of any other string: both find every ranked pair present, and only pairs present."""
    rank_all = {a + b: 0 for a in "abcdefghij" for b in "abcdefghij"}.get
    assert _pairs_present("abba", rank_all) == {"ab", "bb", "ba"}
    assert _pairs_present("abba", {"ab": 0}.get) == {"ab"}  # unranked pairs are not searched for
    many = "abcdefghij" * 3
    assert _pairs_present(many, rank_all) == {a + b for a, b in pairwise(many)}


@settings(max_examples=60)
@given(st.text(alphabet="ab \n日🤗", max_size=50), st.integers(0, 7))
@example("abba", 2)
@example("abc", 2)
@example("", 0)
def test_distinct_characters_are_the_set_of_the_text_up_to_the_limit(text, limit):
    """distinct_characters (one str.replace pass per kind of character) is set(text) when that holds at most limit
    characters, and None when it holds more."""
    expected = set(text) if len(set(text)) <= limit else None
    assert distinct_characters(text, limit) == expected


SYMBOLS = ["a", "b", "aa", "ab", "ba", "bb", "aab", "abb"]


@settings(max_examples=300)
@given(
    st.text(alphabet="ab", max_size=80),
    st.dictionaries(st.tuples(st.sampled_from(SYMBOLS), st.sampled_from(SYMBOLS)), st.integers(0, 2), max_size=10),
)
@example("baab", {("a", "a"): 0, ("a", "b"): 0})  # a tie: heap_merge takes the leftmost, (a, a)
@example("aaaa", {("a", "a"): 1, ("aa", "a"): 0})  # a round of (a, a) would hide the better (aa, a)
def test_rounds_then_heap_equal_the_heap_alone(text, ranks):
    """The long-piece path (merge_in_rounds, then heap_merge on what is left) equals heap_merge alone: random ranks
    over a few short symbols, so that ties between kinds of pair and rounds that would create a better pair are
    common (without either check in merge_in_rounds this test fails)."""
    symbols, finished = merge_in_rounds(list(text), ranks)
    expected = heap_merge(list(text), ranks)
    assert heap_merge(symbols, ranks) == expected
    if finished:
        assert symbols == expected


# -- merging many words together ----------------------------------------------------------------------------------


def _byte_table(pair_ranks: dict) -> tuple[dict, PairTable]:
    """A byte-level vocabulary: the 256 bytes and every join of ``pair_ranks`` (ids in order of first sight)."""
    token_ids = {bytes([b]): b for b in range(256)}
    for left, right in pair_ranks:
        token_ids.setdefault(left + right, len(token_ids))
    return token_ids, PairTable(token_ids, pair_ranks)


def test_merge_together_docstring_example():
    """Three words, one merge each per step: "the" -> th e -> the, "cat" -> c at -> cat, "on" -> on."""
    ranks = {(b"t", b"h"): 2, (b"h", b"e"): 9, (b"c", b"a"): 7, (b"a", b"t"): 4, (b"o", b"n"): 5, (b"th", b"e"): 10,
             (b"c", b"at"): 11}
    token_ids, table = _byte_table(ranks)
    assert merge_together([b"the", b"cat", b"on", b"x"], table) == [
        (token_ids[b"the"],), (token_ids[b"cat"],), (token_ids[b"on"],), (token_ids[b"x"],)]


BYTE_SYMBOLS = [b"a", b"b", b"aa", b"ab", b"ba", b"bb", b"aab", b"abb"]


@settings(max_examples=300)
@given(
    st.lists(st.binary(min_size=1, max_size=30).map(lambda data: bytes(b"ab"[b % 2] for b in data)), max_size=12),
    st.dictionaries(st.tuples(st.sampled_from(BYTE_SYMBOLS), st.sampled_from(BYTE_SYMBOLS)), st.integers(0, 2),
                    max_size=10),
)
@example([b"baab", b"ab"], {(b"a", b"a"): 0, (b"a", b"b"): 0})  # a tie: the leftmost pair, (a, a), merges first
@example([b"aaaa"], {(b"a", b"a"): 1, (b"aa", b"a"): 0})  # the merge makes a better pair: it goes next
def test_words_merged_together_equal_each_merged_alone(words, ranks):
    """merge_together against heap_merge, word by word: random ranks over a few short symbols (ties between pairs
    are common, and merges that make a better-ranked pair), several words at once that finish at different steps."""
    token_ids, table = _byte_table(ranks)
    alone = [tuple(token_ids[symbol] for symbol in heap_merge([word[i : i + 1] for i in range(len(word))], ranks))
             for word in words]
    assert merge_together(words, table) == alone


def test_pair_table_ids_are_the_vocabularys():
    """Symbols are numbered apart from the ids, so a vocabulary that gives two tokens one id (a vocab.json may)
    still merges right, and a pair whose join is not a token is never made."""
    token_ids = {bytes([b]): b for b in range(256)} | {b"ab": 300, b"cd": 300}
    table = PairTable(token_ids, {(b"a", b"b"): 0, (b"c", b"d"): 1, (b"a", b"c"): 2})
    assert merge_together([b"abcd", b"ac"], table) == [(300, 300), (ord("a"), ord("c"))]


def test_merge_together_refuses_what_it_is_not_for():
    _, table = _byte_table({})
    assert merge_together([], table) == []
    for words in ([b""], [b"x" * (MAX_SYMBOLS + 1)]):
        with pytest.raises(ValueError, match="non-empty words of at most"):
            merge_together(words, table)


# -- cutting words where no token spans --------------------------------------------------------------------------


def test_cuts_fall_where_no_token_spans():
    """Tokens "ab" and "cd": nothing holds b then c, so "abcd" merges as "ab" and "cd". A token "bcd" spans b|c, and
    "ab" and "cd" span the other two points, so then nothing is cut."""
    assert SpanFreeCuts({b"ab", b"cd"}).parts("abcd") == ["ab", "cd"]
    assert SpanFreeCuts({b"ab", b"cd", b"bcd"}).parts("abcd") == ["abcd"]
    assert SpanFreeCuts({b"ab"}).parts("") == [""]


def test_a_one_byte_character_counts_any_byte_beside_it():
    """Token "xbc": b|c is spanned whatever comes before b, so "abc" is not cut there (a|b is: no token holds a b)."""
    assert SpanFreeCuts({b"xbc"}).parts("abc") == ["a", "bc"]


@cache
def _cl100k() -> tuple[ByteLevelBPE, tiktoken.Encoding]:
    path = shared_file("tokenizers/cl100k/cl100k_base.tiktoken")
    ranks = load_tiktoken_ranks(path)
    ours = Tokenizer.from_pretrained(path.parent).model
    return ours, tiktoken.Encoding("cl100k-local", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})


@cache
def _gpt2() -> tuple[ByteLevelBPE, tiktoken.Encoding]:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    source = shared_file("tokenizers/gpt2")
    ranks = data_gym_to_mergeable_bpe_ranks(str(source / "vocab.bpe"), str(source / "encoder.json"))
    ours = Tokenizer.from_pretrained(source).model
    return ours, tiktoken.Encoding("gpt2-local", pat_str=R50K_PATTERN, mergeable_ranks=ranks, special_tokens={})


def _fresh(model: ByteLevelBPE) -> ByteLevelBPE:
    """The same model with empty word and part caches, so every word goes through cutting and merging. (What it
    knows of single tokens and character pairs is kept: it depends on the vocabulary alone, and takes ~0.15 s to
    build for cl100k.)"""
    fresh = copy.copy(model)
    fresh._word_ids, fresh._part_ids = WordCache(fresh._encode_word), WordCache(fresh._merge)
    return fresh


@pytest.mark.parametrize("case", [_cl100k, _gpt2], ids=["cl100k", "gpt2"])
@pytest.mark.parametrize("label", list(pathological_inputs(10)))
def test_pathological_inputs_give_tiktokens_ids(case, label):
    """The bench's inputs at 20 KB: one character, two, a random-letter word, spaces, newlines, mixed whitespace,
    digits (each one regex word, or thousands)."""
    ours, reference = case()
    text = pathological_inputs(20_000)[label]
    assert _fresh(ours).encode_ordinary(text) == reference.encode_ordinary(text)


# Long runs and repeats of a few characters, the inputs where rounds and cuts do their work.
RUNS = st.lists(st.tuples(st.sampled_from(["x", "ab", " ", "\n", "\t", "0", "9", "-", "=", "é", "日本", "🤗", "Ab"]),
                          st.integers(1, 300)), max_size=8).map(lambda runs: "".join(text * n for text, n in runs))


@settings(max_examples=40)
@given(st.one_of(RUNS, st.text(max_size=300)))
def test_encoder_gives_tiktokens_ids_on_any_text(text):
    for case in (_cl100k, _gpt2):
        ours, reference = case()
        assert _fresh(ours).encode_ordinary(text) == reference.encode_ordinary(text)


@settings(max_examples=15, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz AZ09é日", min_size=256, max_size=3000).map(
    lambda text: text.replace(" ", "")))
def test_long_words_of_many_letters_give_tiktokens_ids(text):
    """Long words of many distinct letters: cut, and their short parts merged together (ByteLevelBPE._merge_parts)."""
    for case in (_cl100k, _gpt2):
        ours, reference = case()
        assert _fresh(ours).encode_ordinary(text) == reference.encode_ordinary(text)


@settings(max_examples=40)
@given(st.one_of(RUNS, st.text(min_size=1, max_size=300)))
def test_cut_parts_merged_alone_equal_the_word_merged_whole(word):
    """SpanFreeCuts on the real cl100k vocabulary: the parts' merges, joined, are the whole word's heap_merge."""
    ours, _ = _cl100k()
    parts = ours._cuts.parts(word)
    assert "".join(parts) == word
    whole = heap_merge(list(map(BYTE_TOKENS.__getitem__, word.encode("utf-8"))), ours.pair_ranks)
    alone = [symbol for part in parts
             for symbol in heap_merge(list(map(BYTE_TOKENS.__getitem__, part.encode("utf-8"))), ours.pair_ranks)]
    assert alone == whole


# -- training with up-to-date counts ------------------------------------------------------------------------------


def _textbook_train(text: str, vocab_size: int, pattern: str) -> list[tuple[int, int, int, int]]:
    """The straightforward trainer: recount every pair of every distinct word (weighted by its count), take the
    highest count (the smallest pair among equals), merge it everywhere left to right; repeat. Returns (left, right,
    new id, count) per merge; a merge spelling an existing token's bytes reuses its id, as train_bpe does."""
    words = Counter(compile_pattern(resolve_pattern(pattern)).findall(text))
    sequences = {word: list(word.encode("utf-8")) for word in words}
    token_bytes = {b: bytes([b]) for b in range(256)}
    id_of_bytes = {v: k for k, v in token_bytes.items()}
    merges = []
    while len(token_bytes) < vocab_size:
        counts = Counter()
        for word, ids in sequences.items():
            for pair in pairwise(ids):
                counts[pair] += words[word]
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        new_id = id_of_bytes.setdefault(merged, len(token_bytes))
        token_bytes[new_id] = merged
        merges.append((*best, new_id, counts[best]))
        for word, ids in sequences.items():
            out, i = [], 0
            while i < len(ids):
                if tuple(ids[i : i + 2]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            sequences[word] = out
    return merges


CORPORA = st.one_of(
    st.text(alphabet="ab", max_size=200),
    st.text(alphabet="aab b\n", max_size=200),
    st.text(alphabet="xyz  \n\té日", max_size=150),
    RUNS,
)


@settings(max_examples=60)
@given(CORPORA, st.integers(0, 40), st.sampled_from(["cl100k", r"[\s\S]+"]))
def test_trainer_learns_what_the_textbook_trainer_learns(text, merges, pattern):
    """Same merges, same ids, same counts, same tie-breaking, on corpora of many short words and of one long word."""
    seen = []
    learned = train_bpe(text, 256 + merges, pattern=pattern, on_merge=seen.append)
    expected = _textbook_train(text, 256 + merges, pattern)
    assert learned.merges == [m[:3] for m in expected]
    assert [merge.count for merge in seen] == [m[3] for m in expected]


# -- short non-ASCII words: characters merged alone, side by side -------------------------------------------------


def test_edge_symbols_docstring_example():
    assert edge_symbols(list("abc"), {("a", "b"): 0, ("ab", "c"): 1}) == ({"a", "ab", "abc"}, {"c", "abc"})
    assert edge_symbols(list("ab"), {}) == ({"a"}, {"b"})


def test_join_docstring_example():
    assert _join(["a", "b", "c", "d"], [True, False, True]) == ["a", "bc", "d"]


def _toy_model(pair_ranks: dict) -> ByteLevelBPE:
    """Every byte, plus the tokens the ranked pairs make; one word per text."""
    tokens = [*BYTE_TOKENS, *(left + right for left, right in pair_ranks)]
    return ByteLevelBPE(token_ids={token: i for i, token in enumerate(dict.fromkeys(tokens))}, pair_ranks=pair_ranks,
                        pre_tokenizer=PreTokenizer([]), whole_word_first=False)


def test_a_merge_across_two_characters_is_seen_and_the_word_merged_whole():
    """é is C3 A9. With (A9, C3) ranked best, merging "éé" whole joins the middle bytes first: C3 | A9C3 | A9. Each
    é merged alone is one token, but A9 (the last symbol of the first) and C3 (the first of the second) have a rank,
    so the boundary is not apart and the word is merged as one part."""
    ranks = {(b"\xa9", b"\xc3"): 0, (b"\xc3", b"\xa9"): 1}
    model = _toy_model(ranks)
    assert model._boundaries.apart([model._merge("é"), model._merge("é")]) == [False]
    expected = [model.token_ids[t] for t in (b"\xc3", b"\xa9\xc3", b"\xa9")]
    assert list(_by_characters(model, "éé")) == list(model._merge("éé")) == expected


def _by_characters(model: ByteLevelBPE, word: str) -> tuple[int, ...]:
    """What ByteLevelBPE does with a short non-ASCII word: its parts merged alone, checked, joined where needed."""
    ids = model._boundaries.merge(NON_ASCII_PARTS.findall(word), model._part_ids.__getitem__)
    return model._merge(word) if ids is None else ids


def test_characters_that_never_merge_across_stay_apart():
    """Only (C3, A9) ranked: each é is one token, and nothing pairs A9 or é with what follows: apart."""
    model = _toy_model({(b"\xc3", b"\xa9"): 0})
    assert model._boundaries.apart([model._merge("é"), model._merge("é")]) == [True]
    assert list(_by_characters(model, "ééé")) == [model.token_ids[b"\xc3\xa9"]] * 3


# Words the way text in other scripts meets a byte-level tokenizer: CJK, kana, accents, emoji, with ASCII around.
NON_ASCII_WORDS = st.lists(st.sampled_from([*"的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自",
                                            *"あいうえおカタナ", *"éèüñßøå", "🤗", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️",
                                            *" a'.,\n0"]), min_size=1, max_size=40).map("".join)


@settings(max_examples=60)
@given(NON_ASCII_WORDS)
@example("师设")  # GPT-2 merges across these two characters' boundary (found on the bench's corpus)
@example("父意")
@example("的 一")  # a space, then a character: the space starts the second part
def test_characters_side_by_side_equal_the_word_merged_whole(word):
    """_by_characters (parts merged alone, TokenBoundaries' check, joins) equals merging the whole word's bytes
    with heap_merge, on GPT-2's merge ranks and cl100k's token ranks, whatever the word (the pre-tokenizer is not
    asked: spaces, punctuation and digits are in some words here, as a tokenizer.json's own Split may leave them)."""
    for case in (_cl100k, _gpt2):
        model = _fresh(case()[0])
        assert _by_characters(model, word) == model._merge(word)


@settings(max_examples=40)
@given(NON_ASCII_WORDS.map(lambda word: word * 3))
def test_non_ascii_text_gives_tiktokens_ids(text):
    for case in (_cl100k, _gpt2):
        ours, reference = case()
        assert _fresh(ours).encode_ordinary(text) == reference.encode_ordinary(text)


# -- the shipped patterns run by re ------------------------------------------------------------------------------

PATTERN_TEXT = st.lists(st.sampled_from([*"aZé日 \t\r\n\u00a0\u3000\u001c\u00850٣²Ⅻ'!.-ſ", "'s", "'LL", "'ve",
                                         "'d", "'t", "🤗", "👍🏽", "𝐀", "𠀀", "𝟙", "\U0001e950"]),
                        max_size=60).map("".join)


@settings(max_examples=200)
@given(st.one_of(PATTERN_TEXT, st.text(max_size=100)))
@example("a  \n")
@example("x \r\n\n  ")
@example("'S 'll\t\t")
@example("x  \u001c")  # re's own \S would not see U+001C as the end of the spaces
@example("🤗a𝐀b")  # an astral letter: regex runs it
def test_shipped_patterns_match_as_the_published_ones(text):
    """Each shipped pattern cuts text exactly as published, run by regex: equal findall on any mix of letters,
    digits, punctuation, apostrophes and contractions (ſ folds to s), every kind of whitespace at the end and in runs
    (U+001C and U+0085: space to Python, not to Unicode), and characters beyond the BMP, letters or not."""
    for published in RE_SPELLINGS:
        assert ShippedPattern(published).findall(text) == regex.findall(published, text), published


def test_bmp_classes_hold_what_regex_puts_in_them():
    """Every BMP character, in turn: re's written-out class matches exactly the characters regex's class does."""
    bmp = "".join(map(chr, range(0x10000)))
    for name in (r"\p{L}", r"\p{N}", r"\s"):
        assert re.findall(f"[{bmp_ranges(name)}]", bmp) == regex.findall(f"[{name}]", bmp), name


def test_text_with_an_astral_letter_goes_to_regex():
    """The BMP spelling alone would cut "a𝐀b" in three (𝐀, beyond the BMP, in no class of it); regex keeps the
    word whole, and so does the shipped pattern."""
    shipped = ShippedPattern(GPT2_PATTERN)
    assert shipped.bmp.findall("a𝐀b") == ["a", "𝐀", "b"]
    assert shipped.findall("a𝐀b") == ["a𝐀b"]


def test_patterns_run_by_re_are_shipped_ones_without_a_time_limit():
    """re has no timeout: only patterns nanollm ships and runs without the limit may go to it."""
    assert set(RE_SPELLINGS) <= set(NAMED_PATTERNS.values())
    assert all(not compile_pattern(pattern).limited for pattern in RE_SPELLINGS)
