"""Bad input to the tokenizer's trainer, saved file and command line ends in one clear TokenizerError, not a traceback.

Each test states the input and the message it expects; the hypothesis test corrupts a valid saved file at random and
checks that nothing but TokenizerError (or a working tokenizer) comes out of loading it.
"""
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError
from nanollm.tokenizer.byte_level import NAMED_PATTERNS
from nanollm.tokenizer.saving import BPEMerges, read_nanollm_tokenizer
from nanollm.tokenizer.train import train_bpe

# Wikipedia's example (train.py's docstring): merges aa=256, ab=257, aaab=258; then <s>=259 and </s>=260.
VALID = train_bpe("aaabdaaabac", 256 + 3 + 2, special_tokens=("<s>", "</s>"), bos_token="<s>", eos_token="</s>")


def _saved_record(tmp_path):
    path = VALID.save(tmp_path)
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_valid_file_loads_and_names_its_tokens(tmp_path):
    """The base every corruption below starts from is itself fine: BOS <s> = 259 is prepended, aaab = 258."""
    path, _ = _saved_record(tmp_path)
    tok = Tokenizer(read_nanollm_tokenizer(path))
    assert tok.encode_prompt("aaab</s>") == [259, 258, 260]


# -- the saved file (B7) ------------------------------------------------------------------------------------------


def test_saved_file_that_is_not_utf8(tmp_path):
    """Byte 0xFF never occurs in UTF-8; before the fix this was a UnicodeDecodeError traceback."""
    path, _ = _saved_record(tmp_path)
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(TokenizerError, match=r"nanollm_tokenizer\.json is not UTF-8 text \(byte 0xff at offset 12"):
        BPEMerges.load(path)


@pytest.mark.parametrize("pattern, message", [
    ("(", "not a valid regex: missing \\)"),
    ("(a)|.", "1 capturing group"),  # findall would return the group, "" for every "." match, and drop text
    (5, "pattern must be a string, not the integer 5"),
])
def test_saved_file_with_bad_pattern_fails_at_load(tmp_path, pattern, message):
    """Refused by BPEMerges.load itself, with the file's name, before any Tokenizer is built or any text encoded."""
    path, record = _saved_record(tmp_path)
    record["pattern"] = pattern
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"nanollm_tokenizer\.json: .*" + message):
        BPEMerges.load(path)


@pytest.mark.parametrize("field, value, message", [
    ("version", True, "version must be an integer, not the boolean True"),  # True == 1 in Python, but not 1
    ("version", 1.0, "version must be an integer, not the number 1.0"),
    ("version", 2, "version is 2; this nanollm reads version 1"),
    ("type", "unigram", "type is 'unigram', an unknown tokenizer type"),
    ("merges", {"97": 97}, "merges must be a list, not an object"),
    ("merges", [[97, 97]], r"merges\[0\] must be \[left id, right id, result id\]"),
    ("merges", [[97.0, 97, 256]], r"merges\[0\] must be"),  # 97.0 == 97 as a dict key: floats must not pass
    ("merges", [[97, 97, 256], [97, 98, 300]], "the next new id should be 257"),
    ("merges", [[97, 700, 256]], "uses an id no earlier merge defined"),
    ("merges", [[97, 97, 256], [97, 98, 256]], "id 256 already means b'aa'"),
    ("special_tokens", ["<s>"], "special_tokens must be an object, not a list"),
    ("special_tokens", {"<s>": 259, "</s>": -1}, "special_tokens.</s> must be an id"),
    ("special_tokens", {"<s>": 259, "</s>": 259}, "special_tokens gives id 259 to both '<s>' and '</s>'"),
    ("special_tokens", {"<s>": 259, "</s>": 97}, "reuses id 97"),
    ("special_tokens", {"<s>": 259, "</s>": 260, "": 261}, "empty string"),
    ("special_tokens", {"<s>": 259, "</s>": 260, "\ud800": 261}, "lone surrogate"),
    ("bos_token", 259, "bos_token must be a string or null, not the integer 259"),
    ("eos_token", "<eos>", "eos_token '<eos>' is not one of the special tokens"),
    ("add_bos_token", "yes", "add_bos_token must be true or false, not the string 'yes'"),
])
def test_saved_file_with_malformed_field(tmp_path, field, value, message):
    path, record = _saved_record(tmp_path)
    record[field] = value
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"nanollm_tokenizer\.json: .*" + message):
        BPEMerges.load(path)


def test_saved_file_missing_a_required_field(tmp_path):
    path, record = _saved_record(tmp_path)
    del record["merges"]
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"nanollm_tokenizer\.json: merges is missing"):
        BPEMerges.load(path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 1000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["format", "version", "type", "pattern", "merges", "special_tokens", "bos_token", "eos_token", "add_bos_token"]
)
_edits = st.one_of(
    st.tuples(st.just("set"), _fields, _json_values),
    st.tuples(st.just("delete"), _fields, st.none()),
    st.tuples(st.just("merge"), st.integers(0, 2), st.tuples(st.integers(0, 2), _json_values)),
    st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
)


def _apply(edit, text: str) -> bytes:
    kind, where, what = edit
    if kind == "byte":  # overwrite one byte of the file as written: bad JSON, bad UTF-8, or a subtly changed value
        data = bytearray(text.encode("utf-8"))
        data[where % len(data)] = what
        return bytes(data)
    record = json.loads(text)
    try:
        if kind == "set":
            record[where] = what
        elif kind == "delete":
            del record[where]
        else:  # one number of one merge
            record["merges"][where][what[0]] = what[1]
    except (KeyError, IndexError, TypeError):
        pass  # an earlier edit removed what this one would change
    return json.dumps(record).encode("utf-8")


@settings(max_examples=300)
@given(st.lists(_edits, min_size=1, max_size=3), st.text(max_size=20))
def test_corrupted_saved_file_loads_or_raises_tokenizer_error(tmp_path_factory, edits, text):
    """Whatever a corruption does, loading either raises TokenizerError or gives a tokenizer that encodes and decodes
    without any other exception."""
    path = VALID.save(tmp_path_factory.mktemp("corrupt"))
    data = path.read_bytes()
    for edit in edits:
        try:
            data = _apply(edit, data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break  # an earlier byte edit already broke the file; load it as it is
    path.write_bytes(data)
    try:
        tok = Tokenizer(read_nanollm_tokenizer(path))
    except TokenizerError:
        return
    tok.decode(tok.encode(text))
    tok.encode_prompt(text)


# -- training (B8, B9) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"pattern": "("}, "is not a valid regex"),
    ({"pattern": "(a+)|[^a]+"}, "1 capturing group"),
    ({"pattern": "a+"}, r"first missed: 'b' at offset 3"),  # "aaab...": the first b is skipped
    ({"special_tokens": ("<s>", "<s>")}, "'<s>' is listed twice"),  # B9: was {'<s>': 257} with 256 holding nothing
    ({"special_tokens": ("",)}, "non-empty string"),
    ({"special_tokens": ("<s>",), "eos_token": "</s>"}, "eos_token '</s>' must also be listed"),
])
def test_train_refuses_bad_arguments(kwargs, message):
    with pytest.raises(TokenizerError, match=message):
        train_bpe("aaabdaaabac", 300, **kwargs)


def test_trained_special_ids_follow_the_merges_without_gaps():
    """"ab" gives one merge (256), so the two special tokens take 257 and 258 and every id below 259 means something."""
    trained = train_bpe("ab", 259, special_tokens=("<s>", "</s>"))
    assert trained.special_tokens == {"<s>": 257, "</s>": 258}
    assert sorted([*trained.token_bytes(), *trained.special_tokens.values()]) == list(range(259))


# -- command line (B8, D4) ----------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nanollm.tokenizer", *map(str, args)], capture_output=True,
                          check=False)


@pytest.mark.parametrize("case", ["bad pattern", "not utf-8", "repeated special"])
def test_cli_train_errors_are_one_line(tmp_path, case):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"caf\xe9 au lait" if case == "not utf-8" else b"the cat sat")  # Latin-1 e-acute
    extra = {"bad pattern": ["--pattern", "("], "not utf-8": [], "repeated special": ["--special", "<s>"] * 2}[case]
    result = _cli("train", "--input", corpus, "--vocab-size", 300, "--output", tmp_path / "tok", *extra)
    expected = {"bad pattern": "is not a valid regex", "not utf-8": "corpus.txt is not UTF-8 text (byte 3",
                "repeated special": "'<s>' is listed twice"}[case]
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.startswith("error: ") and expected in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not (tmp_path / "tok").exists()


def test_cli_encode_refuses_stdin_that_is_not_utf8(tmp_path):
    VALID.save(tmp_path)
    result = subprocess.run([sys.executable, "-m", "nanollm.tokenizer", "encode", "--tokenizer", str(tmp_path)],
                            input=b"ok \xff", capture_output=True, check=False)
    assert result.returncode == 1
    assert result.stderr.decode() == "error: standard input is not UTF-8 text (byte 3: invalid start byte)\n"


def test_cli_help_names_every_named_pattern(capsys):
    """The help text is built from NAMED_PATTERNS, so r50k and llama3 (once missing from it) are listed."""
    from nanollm.tokenizer.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(name in help_text for name in NAMED_PATTERNS)
    assert set(NAMED_PATTERNS) == {"gpt2", "r50k", "cl100k", "o200k", "llama3"}
