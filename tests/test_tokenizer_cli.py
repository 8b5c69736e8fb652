"""python -m nanollm.tokenizer encode --pieces and train --verbose: what a learner sees is what the tokenizer did.

--pieces: each id with the text (or, for part of a character, the bytes) it adds; joined, the pieces are the decoded
text, byte for byte, for byte-level BPE and SentencePiece alike. --verbose: each merge in the order learned, equal to
the merges the saved file holds, with counts recomputed here by a plain loop over the same words.
"""
import ast
import subprocess
import sys
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.loader import DEMO_MODEL
from nanollm.tokenizer import Tokenizer, load_tokenizer
from nanollm.tokenizer.__main__ import main
from nanollm.tokenizer.byte_level import CL100K_PATTERN
from nanollm.tokenizer.saving import NANOLLM_TOKENIZER_FILE, BPEMerges
from tests.conftest import PROJECT_ROOT, shared_file

TEXTS = ("Hello, I'm an AI assistant.", "  two leading spaces, ünïcödé and 🤗\n\ttab", "日本語のテキスト", "x  y  ")
CORPUS = ("The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
          "def f(x): return x * 2  # 日本語 🤗\n") * 4


def cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def parsed_pieces(out: str) -> list[tuple[int, bytes]]:
    """`15496 'Hello'` lines -> [(15496, b'Hello')]: a str literal is UTF-8 text, a bytes literal bytes."""
    rows = []
    for line in out.splitlines():
        number, literal = line.split(" ", 1)
        value = ast.literal_eval(literal)
        rows.append((int(number), value.encode("utf-8") if isinstance(value, str) else value))
    return rows


TOKENIZERS = {"demo": lambda: DEMO_MODEL, "gpt2": lambda: shared_file("tokenizers/gpt2"),
              "llama2 (SentencePiece)": lambda: shared_file("tokenizers/llama2")}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def folder(request):
    return TOKENIZERS[request.param]()


# -- encode --pieces -----------------------------------------------------------------------------------------------

def test_gpt2_pieces_are_the_issues_example(capsys):
    status, out, err = cli(capsys, "encode", "--pieces", "--tokenizer", shared_file("tokenizers/gpt2"),
                           "Hello, I'm an AI assistant.")
    assert status == 0 and err == ""
    assert out.splitlines() == ["15496 'Hello'", "11 ','", "314 ' I'", "1101 \"'m\"", "281 ' an'", "9552 ' AI'",
                                "8796 ' assistant'", "13 '.'"]


def test_pieces_rejoin_to_the_text(capsys, folder):
    text = "\n".join(TEXTS)
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode(text)
    status, out, _ = cli(capsys, "encode", "--pieces", "--tokenizer", folder, text)
    rows = parsed_pieces(out)
    assert status == 0 and [i for i, _ in rows] == ids
    joined = b"".join(data for _, data in rows)
    assert joined == tok.decode_bytes(ids)
    assert joined.decode("utf-8") == tok.decode(ids) == text


def test_a_character_split_over_ids_shows_its_bytes(capsys):
    """GPT-2 spends three ids on " 🤗" (five bytes): the first two hold parts of the emoji, shown as bytes."""
    status, out, _ = cli(capsys, "encode", "--pieces", "--tokenizer", shared_file("tokenizers/gpt2"), " 🤗")
    literals = [line.split(" ", 1)[1] for line in out.splitlines()]
    assert status == 0 and all(lit.startswith("b'") for lit in literals)
    assert b"".join(ast.literal_eval(lit) for lit in literals) == " 🤗".encode("utf-8")


def test_special_tokens_are_one_piece_with_allow_special(capsys):
    status, out, _ = cli(capsys, "encode", "--pieces", "--allow-special", "--tokenizer", DEMO_MODEL,
                         "a<|endoftext|>b")
    assert status == 0 and out.splitlines()[1] == "1023 '<|endoftext|>'"


@pytest.fixture(scope="module")
def llama2():
    return Tokenizer.from_pretrained(shared_file("tokenizers/llama2"))


@pytest.fixture(scope="module")
def demo():
    return Tokenizer.from_pretrained(DEMO_MODEL)


@settings(max_examples=60)
@given(st.text(max_size=40))
def test_token_pieces_join_to_decode_bytes(demo, llama2, text):
    """Any text: the pieces of byte-level BPE are its UTF-8 bytes; SentencePiece's join to decode_bytes (its first
    piece without the dummy prefix's space), with or without the BOS control piece in front."""
    assert b"".join(demo.pieces(demo.encode(text))) == text.encode("utf-8")
    for ids in (llama2.encode(text), llama2.encode_prompt(text)):
        assert b"".join(llama2.pieces(ids)) == llama2.decode_bytes(ids)


def test_pieces_through_the_program():
    result = subprocess.run([sys.executable, "-m", "nanollm.tokenizer", "encode", "--pieces", "--tokenizer",
                             str(DEMO_MODEL), "Hello"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout == "72 'H'\n656 'el'\n316 'lo'\n"


# -- train --verbose -----------------------------------------------------------------------------------------------

def test_verbose_prints_the_hand_checked_merges(capsys, tmp_path):
    """train.py's docstring example, "aaabdaaabac": aa seen 4 times, then ab (2, wins the tie), then aaab (2)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("aaabdaaabac", encoding="utf-8")
    status, out, _ = cli(capsys, "train", "--verbose", "--input", corpus, "--vocab-size", 259, "--output", tmp_path)
    assert status == 0
    assert out.splitlines()[:3] == ["merge 97 + 97 -> 256 'aa' (count 4)", "merge 97 + 98 -> 257 'ab' (count 2)",
                                    "merge 256 + 257 -> 258 'aaab' (count 2)"]
    assert out.splitlines()[3].startswith("wrote ") and len(out.splitlines()) == 4


def naive_counts(text: str, merges: list[tuple[int, int, int]]) -> list[int]:
    """How often each merge's pair occurs (adjacent, overlaps counted) just before it is applied, by rescanning
    every word: the textbook loop, independent of train.py's incremental counts."""
    words = Counter(regex.findall(CL100K_PATTERN, text))
    symbols = {word: list(word.encode("utf-8")) for word in words}
    counts = []
    for left, right, new in merges:
        pairs = Counter()
        for word, seq in symbols.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += words[word]
        assert pairs[(left, right)] == max(pairs.values())  # the most frequent pair is the one merged
        counts.append(pairs[(left, right)])
        for word, seq in symbols.items():
            merged, i = [], 0
            while i < len(seq):
                if seq[i : i + 2] == [left, right]:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            symbols[word] = merged
    return counts


def test_verbose_merges_equal_the_learned_merges_in_order(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out_dir = tmp_path / "tok"
    status, out, err = cli(capsys, "train", "--verbose", "--input", corpus, "--vocab-size", 300, "--output", out_dir)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[-1].startswith("wrote ")
    shown = []
    for line in lines[:-1]:
        pair, rest = line.removeprefix("merge ").split(" -> ")
        left, right = (int(x) for x in pair.split(" + "))
        new, rest = rest.split(" ", 1)
        literal, count = rest.rsplit(" (count ", 1)
        shown.append((left, right, int(new), ast.literal_eval(literal), int(count.rstrip(")"))))
    learned = BPEMerges.load(out_dir / NANOLLM_TOKENIZER_FILE).merges
    assert [m[:3] for m in shown] == [tuple(m) for m in learned] and len(learned) == 300 - 256
    assert [m[4] for m in shown] == naive_counts(CORPUS, learned)
    tok = load_tokenizer(out_dir)
    for left, right, new, literal, _ in shown:
        data = literal.encode("utf-8") if isinstance(literal, str) else literal
        assert data == tok.token_to_bytes(new) == tok.token_to_bytes(left) + tok.token_to_bytes(right)


def test_without_verbose_only_the_summary(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    status, out, _ = cli(capsys, "train", "--input", corpus, "--vocab-size", 270, "--output", tmp_path / "tok")
    assert status == 0 and len(out.splitlines()) == 1 and out.startswith("wrote ")
