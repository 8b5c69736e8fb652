"""Byte-level BPE (GPT-2, cl100k) against tiktoken and Hugging Face tokenizers; special tokens; streaming decode.

References are built from the same shared files nanollm reads, so any difference is a difference in the algorithm:
tiktoken's ``gpt2`` encoding from encoder.json/vocab.bpe, tiktoken's ``cl100k_base`` from the ranks file, and
``tokenizers``' ByteLevelBPETokenizer from encoder.json/vocab.bpe.
"""
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError, load_tiktoken
from nanollm.tokenizer.byte_level import CL100K_PATTERN, R50K_PATTERN, load_tiktoken_ranks
from tests.conftest import shared_file

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")

# Edge cases named in issue 3, plus a few that have broken tokenizers before.
EDGE_CASES = [
    "",
    " ",
    "  ",
    "Hello world",
    " leading space",
    "trailing space ",
    "trailing spaces   ",
    "multiple   spaces   between",
    "\ttab\tseparated\t",
    "line one\nline two\n\nline four\r\nwindows",
    "\n\n\n",
    " \n \n",
    "it's John's 'S IT'S they'll we've I'd you're I'M 'Ll",
    "'s's's",
    "digits 1 12 123 1234 12345 123456789012345678901234567890",
    "3.14159 and 1,000,000 and 0x1F",
    "日本語のテキストです。中文也可以。한국어",
    "emoji 🤗👍🏽👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "combining e\u0301 a\u0300\u0301\u0302 and Z\u0335\u0322a\u0338l\u0336g\u0337o",
    "paragraph\u2029separator\u2028line separator",
    "nbsp\u00a0here and\u3000ideographic space",
    "supercalifragilisticexpialidocious" * 20,
    "a" * 2000,
    " " * 100 + "x",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<|endoftext|> is plain text here",
    "mixed: Ωμέγα Привет مرحبا שלום नमस्ते",
    "\x00\x01\x7f control chars",
    "((((((((((!!!!!!!!!!))))))))))",
]

# Characters that interact with the pre-tokenizer patterns: spaces of all kinds, apostrophes, digits, marks, CJK.
TRICKY = list(" \t\n\r'sSdtmlrveDTM0123456789aZ.,!?()-_日本🤗\u0301\u2029\u00a0\u3000\u200d\x00") + ["'s", "'LL"]
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=40).map("".join)
# Parity is drawn from characters assigned in Python's Unicode tables (14.0): the regex package knows newer Unicode
# versions than tiktoken's and tokenizers' Rust engines, so a character added since (e.g. U+323B0, Unicode 17) is a
# letter to one and unassigned to the other and splits differently. See byte_level.py.
assigned_text = st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=60)


def shared_directory(tmp_path_factory, name: str, files: dict[str, str]):
    """A fresh directory holding reference files from ../shared/data under the names a loader looks for:
    {"vocab.json": "tokenizers/gpt2/encoder.json"} copies GPT-2's encoder.json in as vocab.json."""
    directory = tmp_path_factory.mktemp(name)
    for target, source in files.items():
        shutil.copy(shared_file(source), directory / target)
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return shared_directory(tmp_path_factory, "gpt2", {"encoder.json": "tokenizers/gpt2/encoder.json",
                                                       "vocab.bpe": "tokenizers/gpt2/vocab.bpe"})


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return Tokenizer.from_pretrained(gpt2_dir)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_dir):
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    return tiktoken.Encoding("gpt2-local", pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf_gpt2(gpt2_dir):
    return tokenizers.ByteLevelBPETokenizer(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"),
                                            add_prefix_space=False)


@pytest.fixture(scope="module")
def cl100k():
    return load_tiktoken(shared_file("tokenizers/cl100k/cl100k_base.tiktoken"))


@pytest.fixture(scope="module")
def tiktoken_cl100k(cl100k):
    path = shared_file("tokenizers/cl100k/cl100k_base.tiktoken")
    return tiktoken.Encoding("cl100k-local", pat_str=CL100K_PATTERN, mergeable_ranks=load_tiktoken_ranks(path),
                             special_tokens=cl100k.special_tokens)


# -- GPT-2 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", EDGE_CASES)
def test_gpt2_edge_cases_match_tiktoken_and_tokenizers(gpt2, tiktoken_gpt2, hf_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert ids == hf_gpt2.encode(text).ids
    assert gpt2.decode(ids) == text


@settings(max_examples=150)
@given(st.one_of(assigned_text, tricky_text))
def test_gpt2_random_text_matches_references(gpt2, tiktoken_gpt2, hf_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert ids == hf_gpt2.encode(text).ids


@settings(max_examples=150)
@given(st.text())
def test_gpt2_round_trip_any_unicode(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_hand_checked_ids(gpt2):
    """GPT-2's two most famous ids: "Hello" is 15496 and " world" is 995 (also in tiktoken's own test-suite)."""
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eos_token_id == gpt2.bos_token_id == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.token_to_bytes(995) == b" world"


# -- cl100k ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", EDGE_CASES)
def test_cl100k_edge_cases_match_tiktoken(cl100k, tiktoken_cl100k, text):
    ids = cl100k.encode(text)
    assert ids == tiktoken_cl100k.encode_ordinary(text)
    assert cl100k.decode(ids) == text


@settings(max_examples=150)
@given(st.one_of(assigned_text, tricky_text))
def test_cl100k_random_text_matches_tiktoken(cl100k, tiktoken_cl100k, text):
    ids = cl100k.encode(text)
    assert ids == tiktoken_cl100k.encode_ordinary(text)
    assert cl100k.decode(ids) == text


def test_cl100k_special_tokens_and_vocab_size_match_tiktoken(cl100k, tiktoken_cl100k):
    assert cl100k.vocab_size == tiktoken_cl100k.n_vocab
    text = "<|endoftext|>hi<|fim_prefix|> x"
    assert cl100k.encode(text, allowed_special="all") == tiktoken_cl100k.encode(text, allowed_special="all")
    assert cl100k.encode_batch(["a b", "c"]) == tiktoken_cl100k.encode_batch(["a b", "c"])
    assert cl100k.token_count("hello world") == 2


# -- surrogates (issue 9): a str that is not valid Unicode is encoded as tiktoken encodes it -------------------------

# Lone high and low surrogates, valid pairs (👍 = D83D DC4D; U+10FFFF = DBFF DFFF), and a pair written backwards.
SURROGATES = ["\ud83d", "\udc4d", "\ud83d\udc4d", "\ud800", "\udfff", "\udbff\udfff", "\udc4d\ud83d"]
surrogate_text = st.lists(st.one_of(assigned_text, tricky_text, st.sampled_from(SURROGATES + ["<|endoftext|>"])),
                          max_size=8).map("".join)


def test_surrogates_hand_checked(gpt2, tiktoken_gpt2):
    """A pair is joined into the character it stands for, a lone surrogate becomes U+FFFD: never UnicodeEncodeError
    (the error it was before)."""
    assert gpt2.encode("\ud83d\udc4d") == gpt2.encode("👍") == tiktoken_gpt2.encode("\ud83d\udc4d")
    assert gpt2.encode("a\ud83d") == gpt2.encode("a\ufffd") == tiktoken_gpt2.encode("a\ud83d")


@settings(max_examples=100)
@given(surrogate_text)
def test_surrogates_encode_as_tiktoken_does(gpt2, tiktoken_gpt2, cl100k, tiktoken_cl100k, text):
    for ours, theirs in ((gpt2, tiktoken_gpt2), (cl100k, tiktoken_cl100k)):
        assert ours.encode(text) == theirs.encode_ordinary(text)
        assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")


# -- special tokens ----------------------------------------------------------------------------------------------


def test_special_text_is_ordinary_text_by_default(gpt2, tiktoken_gpt2):
    """No prompt injection: user text spelling <|endoftext|> is encoded as its characters, not as id 50256."""
    text = "a<|endoftext|>b"
    ids = gpt2.encode(text)
    assert 50256 not in ids
    assert ids == tiktoken_gpt2.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == text


def test_allowed_special_parses_them(gpt2, tiktoken_gpt2):
    text = "a<|endoftext|>b<|endoftext|>"
    expected = tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special="all") == expected
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == expected
    assert expected.count(50256) == 2


@pytest.mark.parametrize("mode", ["all", "raise", {"<|endoftext|>"}])
def test_disallowed_special_raises(gpt2, mode):
    with pytest.raises(TokenizerError, match="endoftext"):
        gpt2.encode("x <|endoftext|>", disallowed_special=mode)
    assert gpt2.encode("x", disallowed_special=mode) == [87]


def test_unknown_allowed_special_is_an_error(gpt2):
    with pytest.raises(TokenizerError, match="not special tokens"):
        gpt2.encode("x", allowed_special={"<|nope|>"})


def test_bad_inputs_raise_clear_errors(gpt2):
    with pytest.raises(TokenizerError, match="expects a str"):
        gpt2.encode(b"bytes")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        gpt2.decode([50257])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        gpt2.token_to_bytes(-1)


# -- streaming ---------------------------------------------------------------------------------------------------


def test_stream_emoji_split_over_byte_tokens_prints_once(gpt2):
    """🤗 is F0 9F A4 97; GPT-2 spends three tokens on it, and only the last completes the character."""
    ids = gpt2.encode("🤗!")
    decoder = gpt2.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert len(ids) == 4 and pieces == ["", "", "🤗", "!"]
    assert decoder.flush() == ""


@settings(max_examples=200)
@given(st.lists(st.integers(0, 50256), max_size=30))
def test_stream_equals_whole_decode_for_any_ids(gpt2, ids):
    """Any id sequence, including ones that end mid-character (flush turns the tail into U+FFFD)."""
    decoder = gpt2.stream_decoder()
    streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert streamed == gpt2.decode(ids)
    assert gpt2.decode_bytes(ids) == b"".join(gpt2.token_to_bytes(i) for i in ids)


@settings(max_examples=100)
@given(st.text(max_size=40))
def test_stream_of_encoded_text_reproduces_it(cl100k, text):
    decoder = cl100k.stream_decoder()
    assert "".join(decoder.push(i) for i in cl100k.encode(text)) + decoder.flush() == text


def test_decode_matches_tiktoken_on_invalid_utf8(gpt2, tiktoken_gpt2):
    """A lone emoji byte token decodes to U+FFFD exactly as tiktoken's decode (errors="replace") does."""
    ids = gpt2.encode("🤗")[:2]
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids) == "\ufffd"


def test_named_patterns_are_tiktokens():
    """The r50k/cl100k/o200k regexes equal the ones in tiktoken_ext/openai_public.py, read from its source (building
    those encodings would download their rank files)."""
    import ast
    import inspect

    import tiktoken_ext.openai_public as openai_public

    from nanollm.tokenizer.byte_level import NAMED_PATTERNS

    tree = ast.parse(inspect.getsource(openai_public))
    found = {}
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Dict):  # return {"name": ..., "pat_str": r"...", ...}
                for key, value in zip(node.keys, node.values):
                    if getattr(key, "value", None) == "pat_str" and isinstance(value, ast.Constant):
                        found[function.name] = value.value
            is_join = isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and node.value.args
            if is_join and getattr(node.targets[0], "id", "") == "pat_str":
                found[function.name] = "|".join(ast.literal_eval(node.value.args[0]))
    assert openai_public.r50k_pat_str == NAMED_PATTERNS["r50k"]
    assert found["cl100k_base"] == NAMED_PATTERNS["cl100k"]
    assert found["o200k_base"] == NAMED_PATTERNS["o200k"]
