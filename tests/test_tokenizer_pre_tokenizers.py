"""Pre-tokenizer steps (nanollm/tokenizer/pre_tokenizers.py) against the tokenizers library.

Each pipeline is a tiny BPE trained here by tokenizers itself with the pre-tokenizer under test and saved as
tokenizer.json (no network): SmolLM's and StarCoder's Sequence[Digits, ByteLevel] with individual_digits true and
false, with and without ByteLevel's prefix space, and the other places tokenizers allows Digits and Split in a
Sequence (before a SentencePiece-style BPE, around Metaspace). nanollm reads the same file and must give the same
ids and the same decoded text on hypothesis-drawn text, digits of several scripts included.
"""
import json

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError
from nanollm.tokenizer.errors import Place
from nanollm.tokenizer.guards import TimedPattern
from nanollm.tokenizer.pre_tokenizers import BEHAVIORS, PreTokenizer, cut, digits, read_step
from tests.test_tokenizer_byte_level import assigned_text, tricky_text

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers  # noqa: E402

CORPUS = ["In 2024, 12345 people paid $3.50 each; 100 200 300 and 1,000,000.", "x1y22z333 v0.1.2 #42 (7)",
          "Hello world! it's ok\n\n  indented 99 bottles", "٣٤٥ १२३ ½ ² ① １２ numbers of other scripts"] * 25
# Numbers of several scripts (Arabic-Indic, Devanagari, fractions, superscripts, circled, fullwidth) among text.
NUMBERS = list("0123456789٣٤५१½²①１ .,-$\n") + ["  ", " x", "abc", "3.14", "٣٤", "e\u0301"]
number_text = st.lists(st.sampled_from(NUMBERS), max_size=30).map("".join)
any_text = st.one_of(assigned_text, tricky_text, number_text)


def byte_level_pair(tmp_path, steps, add_prefix_space=False):
    """(nanollm, tokenizers) for a byte-level BPE trained with ``steps`` before ByteLevel."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _save_and_load(tmp_path, json.loads(tok.to_str()))


def pieces_pair(tmp_path, steps):
    """(nanollm, tokenizers) for a SentencePiece-style BPE (byte fallback, "▁" for spaces) trained with ``steps``."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    spec = json.loads(tok.to_str())
    for b in range(256):  # the byte pieces byte_fallback needs (sentencepiece's trainer adds them; this one doesn't)
        spec["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(spec["model"]["vocab"]))
    return _save_and_load(tmp_path, spec)


def _save_and_load(tmp_path, spec):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return Tokenizer.from_pretrained(tmp_path), tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))


def same(pair, text):
    ours, reference = pair
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == reference.decode(ids)


# -- Digits before ByteLevel: SmolLM / StarCoder ---------------------------------------------------------------------

DIGITS_PIPELINES = [(individual, prefix) for individual in (True, False) for prefix in (False, True)]


@pytest.fixture(scope="module", params=DIGITS_PIPELINES,
                ids=[f"individual={i}-prefix={p}" for i, p in DIGITS_PIPELINES])
def digits_pair(request, tmp_path_factory):
    individual, prefix = request.param
    return byte_level_pair(tmp_path_factory.mktemp("digits"), [pre_tokenizers.Digits(individual_digits=individual)],
                           add_prefix_space=prefix)


@settings(max_examples=60)
@given(text=any_text)
def test_digits_then_byte_level_equals_tokenizers(digits_pair, text):
    same(digits_pair, text)


@pytest.mark.parametrize("text", ["", "2024", "In 2024, 12345 people", "x1y22z333", "  42  ", "٣٤٥ and १२३ and ½²①",
                                  "v0.1.2\n\n#42", "１２３４"])
def test_digits_edge_cases_equal_tokenizers(digits_pair, text):
    same(digits_pair, text)


def test_individual_digits_keep_every_digit_a_token_of_its_own(tmp_path):
    """The trained vocabulary has merges of digits ("2024" is frequent in the corpus); with individual_digits they can
    never apply, without it they do. nanollm read the same file and made the same choice."""
    ours, _ = byte_level_pair(tmp_path / "one", [pre_tokenizers.Digits(individual_digits=True)])
    assert [ours.decode([i]) for i in ours.encode("In 2024")] == ["In", " ", "2", "0", "2", "4"]
    grouped, _ = byte_level_pair(tmp_path / "runs", [pre_tokenizers.Digits(individual_digits=False)])
    assert len(grouped.encode("In 2024")) < 6


# -- Digits and Split wherever tokenizers allows them in a Sequence ----------------------------------------------------

OTHER_PIPELINES = {
    "Split(MergedWithPrevious), Digits, ByteLevel": (byte_level_pair, lambda: [
        pre_tokenizers.Split(" ", "merged_with_previous"), pre_tokenizers.Digits(individual_digits=False)]),
    "Split(Contiguous), ByteLevel": (byte_level_pair, lambda: [pre_tokenizers.Split(Regex(r"[0-9]"), "contiguous")]),
    "Split(Removed), Digits, ByteLevel": (byte_level_pair, lambda: [
        pre_tokenizers.Split(Regex(r"[,;]"), "removed"), pre_tokenizers.Digits(individual_digits=True)]),
    "Metaspace(first), Digits": (pieces_pair, lambda: [
        pre_tokenizers.Metaspace(prepend_scheme="first", split=False), pre_tokenizers.Digits(individual_digits=True)]),
    "Digits, Metaspace(always, split)": (pieces_pair, lambda: [
        pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.Metaspace(prepend_scheme="always")]),
    "Split(Removed), Metaspace(first)": (pieces_pair, lambda: [
        pre_tokenizers.Split(Regex(r"[0-9]"), "removed"), pre_tokenizers.Metaspace(prepend_scheme="first",
                                                                                    split=False)]),
    "Digits, Split(MergedWithNext)": (pieces_pair, lambda: [
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Split(" ", "merged_with_next")]),
    # capturing groups: the whole match is the word, not the groups' text
    "Split(Isolated, with groups), ByteLevel": (byte_level_pair, lambda: [
        pre_tokenizers.Split(Regex(r"(\d)(\d)"), "isolated")]),
}


@pytest.fixture(scope="module", params=sorted(OTHER_PIPELINES))
def other_pair(request, tmp_path_factory):
    make, steps = OTHER_PIPELINES[request.param]
    return make(tmp_path_factory.mktemp("pipeline"), steps())


@settings(max_examples=30)
@given(text=any_text)
def test_other_sequences_equal_tokenizers(other_pair, text):
    same(other_pair, text)


def test_split_with_capturing_groups_cuts_at_whole_matches(tmp_path):
    """findall returns the groups of such a pattern, ("1", "2") for "12": the words are the whole matches."""
    pair = byte_level_pair(tmp_path, OTHER_PIPELINES["Split(Isolated, with groups), ByteLevel"][1]())
    for text in ["12", "1234", "12a34"]:
        same(pair, text)


def test_removed_split_moves_the_start_of_the_text(tmp_path):
    """Metaspace's "first" adds "▁" only to the piece at offset 0 of the text. "7a": the Split removes the 7, so "a"
    starts at offset 1 and gets none; "a7": "a" is at 0 and gets it. tokenizers agrees on both."""
    pair = pieces_pair(tmp_path, OTHER_PIPELINES["Split(Removed), Metaspace(first)"][1]())
    ours, reference = pair
    assert ours.model.pre_tokenizer.words("7a") == ["a"]
    assert ours.model.pre_tokenizer.words("a7") == ["▁a"]
    same(pair, "7a")
    same(pair, "a7")


# -- the cuts, by hand ------------------------------------------------------------------------------------------------


def test_cut_behaviors_are_the_module_docstring_examples():
    """"a-b--c" cut at "-": each behavior as pre_tokenizers.py's table shows it (tokenizers' split.rs tests agree)."""
    dash = TimedPattern(regex.compile("-"), "test", limited=False)
    expected = {"Isolated": ["a", "-", "b", "-", "-", "c"], "Contiguous": ["a", "-", "b", "--", "c"],
                "Removed": ["a", "b", "c"], "MergedWithPrevious": ["a-", "b-", "-", "c"],
                "MergedWithNext": ["a", "-b", "-", "-c"]}
    assert set(expected) == set(BEHAVIORS)
    for behavior, pieces in expected.items():
        assert cut("a-b--c", dash, behavior)[0] == pieces, behavior
    assert cut("-a", dash, "Removed") == (["a"], False)  # the first piece no longer starts the text


def test_digits_then_gpt2_regex_by_hand():
    """PreTokenizer's docstring: Digits cuts "12" away from its space before GPT-2's regex could join them."""
    byte_level = read_step({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}, Place("test"))
    assert PreTokenizer([byte_level]).words("take 12 eggs") == ["take", " 12", " eggs"]
    assert PreTokenizer([digits(True), byte_level]).words("take 12 eggs") == ["take", " ", "1", "2", " eggs"]
    assert PreTokenizer([digits(False), byte_level]).words("take 12 eggs") == ["take", " ", "12", " eggs"]


@pytest.mark.parametrize("steps, message", [
    ([{"type": "Digits", "individual_digits": 1}], "pretokenizers[0].individual_digits must be true or false"),
    ([{"type": "Punctuation"}], "pretokenizers[0].type is 'Punctuation'"),
    ([{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}] * 2, "second Metaspace"),
])
def test_unsupported_steps_are_refused_by_name(tmp_path, steps, message):
    ours, _ = pieces_pair(tmp_path, [pre_tokenizers.Digits()])
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": steps}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json") as caught:
        Tokenizer.from_pretrained(tmp_path)
    assert message in str(caught.value)


# -- added tokens that take the white space beside them (lstrip / rstrip: Phi-3's chat tokens) ------------------------

STRIPPING = [("<|end|>", dict(rstrip=True)), ("<|user|>", dict(lstrip=True, rstrip=True)), ("<L>", dict(lstrip=True))]
SPACES = [" ", "  ", "\n", "\t", "\u3000", "\x1c", "\u00a0"]  # \x1c: str.isspace() but not Unicode White_Space


@pytest.fixture(scope="module", params=["byte_level", "pieces"])
def stripping_pair(request, tmp_path_factory):
    """A trained BPE with special and non-special added tokens carrying lstrip / rstrip, saved by tokenizers."""
    ours, reference = (byte_level_pair if request.param == "byte_level" else pieces_pair)(
        tmp_path_factory.mktemp("strip"), [pre_tokenizers.Digits(individual_digits=False)])
    reference.add_special_tokens([tokenizers.AddedToken(t, **flags) for t, flags in STRIPPING])
    reference.add_tokens([tokenizers.AddedToken("<b>", lstrip=True, rstrip=True), tokenizers.AddedToken("<|plain|>")])
    directory = tmp_path_factory.mktemp("strip_saved")
    reference.save(str(directory / "tokenizer.json"))
    return Tokenizer.from_pretrained(directory), reference


@settings(max_examples=60)
@given(text=st.lists(st.sampled_from([t for t, _ in STRIPPING] + ["<b>", "<|plain|>", "hi", "x1", "."] + SPACES),
                     max_size=14).map("".join))
def test_lstrip_and_rstrip_take_the_white_space_as_tokenizers_does(stripping_pair, text):
    ours, reference = stripping_pair
    assert ours.encode(text, allowed_special="all") == reference.encode(text, add_special_tokens=False).ids
