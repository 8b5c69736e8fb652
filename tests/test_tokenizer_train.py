"""The merge algorithm, BPE training, nanollm's tokenizer file, and the command line."""
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from nanollm.tokenizer.bpe import bpe_merge, pair_ranks_from_token_ranks
from nanollm.tokenizer.saving import NANOLLM_TOKENIZER_FILE, BPEMerges
from nanollm.tokenizer.train import Merge, train_bpe

CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
    "Numbers 123 4567 and code: def f(x): return x * 2\n"
    "日本語のテキスト 🤗 emoji and   spaces\n"
) * 3


# -- bpe_merge ---------------------------------------------------------------------------------------------------


def test_bpe_merge_docstring_example():
    ranks = {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}
    assert bpe_merge(list("abcab"), ranks) == ["abc", "ab"]


def test_leftmost_wins_a_tie():
    """"aaa" with only (a, a): the left pair merges first, leaving ["aa", "a"] (tiktoken and sentencepiece agree)."""
    assert bpe_merge(list("aaa"), {("a", "a"): 0}) == ["aa", "a"]
    assert bpe_merge(list("aaaa"), {("a", "a"): 0, ("aa", "aa"): 1}) == ["aaaa"]


def test_pair_ranks_from_token_ranks_docstring_example():
    assert pair_ranks_from_token_ranks({b"a": 0, b"b": 1, b"ab": 2, b"abb": 3}) == {(b"a", b"b"): 2, (b"ab", b"b"): 3}


def _naive_merge(symbols, ranks):
    """The textbook loop (tiktoken's _educational.py): rescan all pairs, merge the best, leftmost on ties."""
    symbols = list(symbols)
    while True:
        candidates = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
        if not candidates:
            return symbols
        _, i = min(candidates)
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]


@settings(max_examples=300)
@given(
    st.text(alphabet="abc", max_size=30),
    st.dictionaries(st.tuples(st.text("abc", min_size=1, max_size=3), st.text("abc", min_size=1, max_size=3)),
                    st.integers(0, 5), max_size=12),
)
def test_heap_merge_equals_textbook_loop(text, ranks):
    """Random ranks, with ties between different pairs, on random words."""
    assert bpe_merge(list(text), ranks) == _naive_merge(text, ranks)


# -- training ----------------------------------------------------------------------------------------------------


def test_hand_checked_tiny_corpus():
    """Wikipedia's example, derived in train.py's docstring: aa (256), then ab (257, wins the tie), then aaab (258)."""
    learned = train_bpe("aaabdaaabac", 256 + 3)
    assert learned.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    tok = Tokenizer(learned.parts())
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258]) == "aaab"


def test_on_merge_reports_each_merge_in_order():
    """The callback sees every merge as learned: the same (left, right, new id) as the result, the new token's bytes,
    and the pair's count when chosen (the docstring example: aa seen 4 times, then ab and aaab twice)."""
    seen = []
    learned = train_bpe("aaabdaaabac", 256 + 3, on_merge=seen.append)
    assert seen == [Merge(97, 97, 256, b"aa", 4), Merge(97, 98, 257, b"ab", 2), Merge(256, 257, 258, b"aaab", 2)]
    seen.clear()
    learned = train_bpe(CORPUS, 256 + 40, on_merge=seen.append)
    assert [m[:3] for m in seen] == learned.merges
    tok = Tokenizer(learned.parts())
    assert all(m.token == tok.token_to_bytes(m.new_id) for m in seen)
    assert all(a.count >= b.count for a, b in zip(seen, seen[1:]))  # the most frequent pair goes first


def test_training_stops_when_no_pair_is_left():
    assert train_bpe("ab", 1000).merges == [(97, 98, 256)]


def test_trained_tokenizer_round_trips_and_reloads(tmp_path):
    learned = train_bpe(CORPUS, 256 + 60, special_tokens=("<|endoftext|>",), eos_token="<|endoftext|>")
    tok = Tokenizer(learned.parts())
    assert tok.vocab_size == 256 + 60
    assert tok.eos_token_id == tok.special_tokens["<|endoftext|>"] == 256 + 59
    assert len(tok.encode(CORPUS)) < 0.6 * len(CORPUS.encode())  # 59 merges learned on it save > 40% of tokens
    learned.save(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    for text in [CORPUS, "unseen words, Ünïcödé, 🤗🤗", "x<|endoftext|>y"]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    assert loaded.encode("a<|endoftext|>", allowed_special="all")[-1] == 256 + 59
    assert BPEMerges.load(tmp_path / NANOLLM_TOKENIZER_FILE) == learned


@settings(max_examples=100)
@given(st.text(max_size=50))
def test_trained_tokenizer_round_trips_any_text(trained, text):
    assert trained.decode(trained.encode(text)) == text


@pytest.fixture(scope="module")
def trained():
    return Tokenizer(train_bpe(CORPUS, 256 + 40).parts())


def test_training_is_deterministic():
    assert train_bpe(CORPUS, 300).merges == train_bpe(CORPUS, 300).merges


def test_file_format_is_checked(tmp_path):
    path = train_bpe("aaabdaaabac", 259).save(tmp_path)
    record = json.loads(path.read_text())
    assert record["format"] == "nanollm-tokenizer" and record["version"] == 1
    record["version"] = 99
    path.write_text(json.dumps(record))
    with pytest.raises(TokenizerError, match="version is 99; this nanollm reads version 1"):
        load_tokenizer(tmp_path)


# -- command line ------------------------------------------------------------------------------------------------


def _cli(*args, stdin=None):
    result = subprocess.run([sys.executable, "-m", "nanollm.tokenizer", *map(str, args)], input=stdin,
                            capture_output=True, text=True, check=False)
    return result


def test_cli_train_encode_decode(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out = tmp_path / "tok"
    training = _cli("train", "--input", corpus, "--vocab-size", 300, "--output", out, "--special", "<|eot|>")
    assert training.returncode == 0 and "merges" in training.stdout
    encoded = _cli("encode", "--tokenizer", out, "the fox 🤗")
    ids = [int(i) for i in encoded.stdout.split()]
    assert ids == Tokenizer.from_pretrained(out).encode("the fox 🤗")
    decoded = _cli("decode", "--tokenizer", out, *ids)
    assert decoded.stdout == "the fox 🤗\n"
    assert _cli("decode", "--tokenizer", out, stdin=" ".join(map(str, ids))).stdout == "the fox 🤗\n"
    failed = _cli("encode", "--tokenizer", tmp_path / "missing", "x")
    assert failed.returncode == 1 and "error:" in failed.stderr
