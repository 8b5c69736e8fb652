"""Hostile and unusual tokenizer files and input (issue 9, sections 4 and 5).

Every case ends in one of two ways, within a time limit: a tokenizer that loads and encodes and decodes a sample, or
exactly one TokenizerError whose message names the file (and the key, where there is one). Input files are
byte-identical afterwards. References: tokenizer.json files here are written by the ``tokenizers`` library itself,
and what it does with them is what nanollm must do, or nanollm must refuse the file by name.
"""
import json
import os
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from nanollm.tokenizer.byte_level import LLAMA3_PATTERN, NAMED_PATTERNS, compile_regex
from nanollm.tokenizer.guards import PATTERN_SECONDS_BASE, TimedPattern, pattern_budget, repair_surrogates
from nanollm.tokenizer.saving import NANOLLM_TOKENIZER_FILE, BPEMerges
from nanollm.tokenizer.train import train_bpe
from tests.conftest import make_non_regular, time_limit

tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["singing and ringing, things bring kings sing", "the thing is nothing; 12 345 café 日本",
          "Hello world! it's ok\n\n  x"] * 30
SAMPLE = "Hello singing world! it's 12345 café 日本 🤗\n\n  <|endoftext|> x"
CATASTROPHIC = r"(?:a|aa)+$"  # exponential backtracking on "a" * 40 + "!": every split of the a's is tried
SLOW_TEXT = "a" * 40 + "!"
# A hostile case must end within this many seconds: the pattern budget for short texts, plus room for loading.
LIMIT = PATTERN_SECONDS_BASE + 9


# -- reference files written by tokenizers ------------------------------------------------------------------------


@cache
def byte_level_spec() -> str:
    """A small GPT-2-style tokenizer.json as tokenizers writes it (ByteLevel pre-tokenizer and decoder), trained here,
    with <|endoftext|> special and "ing" (which merges also make) and "café" added as ordinary added tokens."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["ing", "café"])
    return tok.to_str()


@cache
def metaspace_spec() -> str:
    """A small Llama-2-style tokenizer.json (Metaspace, byte fallback, <s> template) as tokenizers writes it."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    spec = json.loads(tok.to_str())
    for b in range(256):  # the byte pieces byte_fallback needs (sentencepiece's trainer adds them; this one doesn't)
        spec["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(spec["model"]["vocab"]))
    return json.dumps(spec)


def write_spec(directory: Path, spec) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = spec if isinstance(spec, str) else json.dumps(spec)
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    return directory


def reference(directory: Path):
    return tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))


def write_vocab_and_merges(directory: Path) -> Path:
    """The byte-level spec as GPT-2's two files (vocab.json + merges.txt), for the settings-file cases."""
    model = json.loads(byte_level_spec())["model"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(merge) for merge in model["merges"]]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


# -- the contract every hostile case is held to -------------------------------------------------------------------


def snapshot(directory: Path) -> dict:
    """The bytes of every regular file in ``directory`` (FIFOs and devices are named, not read)."""
    return {p.name: p.read_bytes() if p.is_file() else p.lstat().st_mode for p in sorted(directory.iterdir())}


def load_or_refuse(directory: Path, blamed: str, text: str = SAMPLE):
    """The contract: within LIMIT seconds, loading ``directory`` either gives a tokenizer that encodes and decodes
    ``text``, or raises one TokenizerError naming ``blamed``; the files are untouched either way. Returns the
    tokenizer or the error."""
    before = snapshot(directory)
    try:
        with time_limit(LIMIT):
            tok = Tokenizer.from_pretrained(directory)
            ids = tok.encode_prompt(text)
            tok.decode(ids)
            tok.decode(tok.encode(text))
            result = tok
    except TokenizerError as err:
        assert blamed in str(err), str(err)
        result = err
    assert snapshot(directory) == before
    return result


def refused(directory: Path, *fragments: str, text: str = SAMPLE) -> str:
    """Loading must fail, and the message must hold every fragment (the file's name, the key, ...)."""
    outcome = load_or_refuse(directory, fragments[0], text)
    assert isinstance(outcome, TokenizerError), f"loaded, but should have been refused: {fragments}"
    message = str(outcome)
    assert all(fragment in message for fragment in fragments), message
    return message


# -- 1. only regular files are read ------------------------------------------------------------------------------

# name -> the other files the directory needs so that this name is the one read
LAYOUTS = {
    "tokenizer.json": [],
    "tokenizer.model": [],
    NANOLLM_TOKENIZER_FILE: [],
    "cl100k_base.tiktoken": [],
    "vocab.json": ["merges.txt"],
    "merges.txt": ["vocab.json"],
    "encoder.json": ["vocab.bpe"],
    "vocab.bpe": ["encoder.json"],
    "tokenizer_config.json": ["vocab.json", "merges.txt"],
    "special_tokens_map.json": ["vocab.json", "merges.txt"],
    "added_tokens.json": ["vocab.json", "merges.txt"],
    "chat_template.jinja": ["vocab.json", "merges.txt"],
}


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory", "dangling link"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_name_that_is_not_a_regular_file_is_refused_at_once(tmp_path, name, kind):
    """Before the fix a FIFO named tokenizer.json hung in open(), /dev/zero read forever, and a FIFO named
    tokenizer_config.json was silently skipped (is_file() is False): now each is one error naming it, at once."""
    model_files = write_vocab_and_merges(tmp_path / "src")
    for other in LAYOUTS[name]:
        source = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}.get(other, other)
        (tmp_path / other).write_bytes((model_files / source).read_bytes())
    make_non_regular(tmp_path / name, kind)
    start = time.perf_counter()
    refused(tmp_path, name)
    with time_limit(LIMIT), pytest.raises(TokenizerError, match=name.replace(".", r"\.")):
        load_tokenizer(tmp_path)  # the engine's entry point: a present name is read and refused, not passed over
    assert time.perf_counter() - start < 5


def test_save_is_atomic_and_refuses_to_overwrite_its_input(tmp_path):
    """The save goes through nanollm.files: a temporary file renamed into place (no leftovers), and a target that is
    one of the inputs is refused before anything is touched."""
    trained = train_bpe("aaabdaaabac", 260, pattern="gpt2")
    path = trained.save(tmp_path)
    path.write_text("old", encoding="utf-8")
    assert trained.save(tmp_path) == path
    assert BPEMerges.load(path).merges == trained.merges
    assert sorted(p.name for p in tmp_path.iterdir()) == [NANOLLM_TOKENIZER_FILE]
    before = path.read_bytes()
    with pytest.raises(OSError, match="it is the input"):
        train_bpe("abab", 258).save(tmp_path, inputs=[path])
    assert path.read_bytes() == before


# -- 2. malformed structures: one error naming the file and the key ------------------------------------------------


def _edit(spec: str, change) -> dict:
    data = json.loads(spec)
    change(data)
    return data


BYTE_LEVEL_CASES = [
    ("vocab is a list", lambda d: d["model"].update(vocab=[]), "model.vocab must be an object, not a list"),
    ("id is a string", lambda d: d["model"]["vocab"].update(a="5"), "model.vocab.a must be an id"),
    ("negative id", lambda d: d["model"]["vocab"].update(a=-1), "model.vocab.a must be an id"),
    ("repeated id", lambda d: d["model"]["vocab"].update(zz=d["model"]["vocab"]["a"]), "gives id"),
    ("merge is a number", lambda d: d["model"]["merges"].__setitem__(0, 5), "model.merges[0] must be a string"),
    ("merge of three", lambda d: d["model"]["merges"].__setitem__(0, ["a", "b", "c"]), "model.merges[0] must be a pair"),
    ("merge outside the vocab", lambda d: d["model"]["merges"].append(["q", "z"]), "not in the vocabulary"),
    ("no merges", lambda d: d["model"].pop("merges"), "model.merges is missing"),
    ("model is null", lambda d: d.update(model=None), "model must be an object, not null"),
    ("WordPiece", lambda d: d["model"].update(type="WordPiece"), "model.type is 'WordPiece'"),
    ("dropout", lambda d: d["model"].update(dropout=0.1), "model.dropout is set"),
    ("ignore_merges a string", lambda d: d["model"].update(ignore_merges="yes"), "model.ignore_merges must be true"),
    ("added token without id", lambda d: d["added_tokens"][0].pop("id"), "added_tokens[0].id is missing"),
    ("added token without content", lambda d: d["added_tokens"][0].pop("content"), "added_tokens[0].content is missing"),
    ("added token id a string", lambda d: d["added_tokens"][0].update(id="0"), "added_tokens[0].id must be an integer"),
    ("added_tokens an object", lambda d: d.update(added_tokens={}), "added_tokens must be a list"),
    ("single_word", lambda d: d["added_tokens"][0].update(single_word=True), "added_tokens[0].single_word is true"),
    ("pre_tokenizer without type", lambda d: d["pre_tokenizer"].pop("type"), "pre_tokenizer.type is missing"),
    ("pre_tokenizer a string", lambda d: d.update(pre_tokenizer="ByteLevel"), "pre_tokenizer must be an object"),
    ("Whitespace before ByteLevel", lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, d["pre_tokenizer"]]}), "pretokenizers[0].type is 'Whitespace'"),
    ("Digits after ByteLevel", lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        d["pre_tokenizer"], {"type": "Digits", "individual_digits": True}]}),
     "pretokenizers[0].type is 'ByteLevel'; ByteLevel must be the last"),
    ("Digits flag a string", lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": "yes"}, d["pre_tokenizer"]]}),
     "pretokenizers[0].individual_digits must be true or false"),
    ("Split inverted", lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": True}, d["pre_tokenizer"]]}),
     "pretokenizers[0] has behavior='Removed', invert=True"),
    ("Sequence without its list", lambda d: d.update(pre_tokenizer={"type": "Sequence"}),
     "pre_tokenizer.pretokenizers is missing"),
    ("ByteLevel without add_prefix_space", lambda d: d["pre_tokenizer"].pop("add_prefix_space"),
     "pre_tokenizer.add_prefix_space is missing"),
    ("normalizer regex does not compile", lambda d: d.update(normalizer={
        "type": "Replace", "pattern": {"Regex": "("}, "content": "x"}), "normalizer.pattern.Regex: pattern '('"),
    ("normalizer pattern with two kinds", lambda d: d.update(normalizer={
        "type": "Replace", "pattern": {"Regex": "a", "String": "b"}, "content": "x"}), "normalizer.pattern must be"),
    ("unknown normalizer", lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer.type is 'Lowercase'"),
    ("no decoder", lambda d: d.update(decoder=None), "decoder is missing"),
    ("another decoder", lambda d: d.update(decoder={"type": "WordPiece"}), "decoder.type is 'WordPiece'"),
    ("template id outside the vocab", lambda d: d.update(post_processor={
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}},
                                                 {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<x>": {"id": "<x>", "ids": [99999], "tokens": ["<x>"]}}}), "adds the id 99999"),
    ("template names an undefined token", lambda d: d.update(post_processor={
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}],
        "special_tokens": {}}), "post_processor.single[0] names the template token '<x>'"),
]


@pytest.mark.parametrize("case, change, message", BYTE_LEVEL_CASES, ids=[c[0] for c in BYTE_LEVEL_CASES])
def test_malformed_tokenizer_json_names_file_and_key(tmp_path, case, change, message):
    refused(write_spec(tmp_path, _edit(byte_level_spec(), change)), "tokenizer.json", message)


def test_json_nested_a_hundred_thousand_deep_is_refused(tmp_path):
    """The json module gives up with RecursionError, which was a traceback."""
    refused(write_spec(tmp_path, '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"), "tokenizer.json",
            "cannot parse")


METASPACE_CASES = [
    ("unk_token missing from the vocab", lambda d: d["model"].update(unk_token="<nope>"), "model.unk_token is '<nope>'"),
    ("no unk and no byte fallback", lambda d: d["model"].update(unk_token=None, byte_fallback=False),
     "has neither byte_fallback nor an unk_token"),
    ("byte piece missing", lambda d: d["model"]["vocab"].pop("<0x41>"), "<0x41> is not in the vocabulary"),
    ("prepend_scheme unknown", lambda d: d["pre_tokenizer"].update(prepend_scheme="sometimes"),
     "pre_tokenizer.prepend_scheme must be 'always'"),
    ("replacement of two characters", lambda d: d["pre_tokenizer"].update(replacement="__"),
     "pre_tokenizer.replacement must be one character"),
    ("Strip of two", lambda d: d["decoder"]["decoders"][3].update(start=2), "decoder.decoders[3] strips"),
    ("Replace decoder elsewhere", lambda d: d["decoder"]["decoders"][0].update(content="_"),
     "decoder.decoders[0] must replace"),
    ("no ByteFallback decoder", lambda d: d["decoder"]["decoders"].pop(1), "has no ByteFallback step"),
    ("merge outside the vocab", lambda d: d["model"]["merges"].append(["▁", "zz"]), "model.merges["),
]


@pytest.mark.parametrize("case, change, message", METASPACE_CASES, ids=[c[0] for c in METASPACE_CASES])
def test_malformed_metaspace_tokenizer_json_names_file_and_key(tmp_path, case, change, message):
    refused(write_spec(tmp_path, _edit(metaspace_spec(), change)), "tokenizer.json", message)


SETTINGS_CASES = [
    ("tokenizer_config.json", {"chat_template": 5}, "chat_template must be a string or a list or null"),
    ("tokenizer_config.json", {"chat_template": [{"template": "x"}]}, "chat_template[0].name is missing"),
    ("tokenizer_config.json", {"chat_template": [{"name": "default", "template": ["x"]}]},
     "chat_template[0].template must be a string"),
    ("tokenizer_config.json", {"bos_token": 5}, "bos_token must be a string or null, not the integer 5"),
    ("tokenizer_config.json", {"eos_token": {"special": True}}, "eos_token.content is missing"),
    ("tokenizer_config.json", {"add_bos_token": "yes"}, "add_bos_token must be true or false or null"),
    ("tokenizer_config.json", {"add_prefix_space": 1}, "add_prefix_space must be true or false or null"),
    ("tokenizer_config.json", {"legacy": "true"}, "legacy must be true or false or null"),
    ("tokenizer_config.json", {"tokenizer_class": ["GPT2Tokenizer"]}, "tokenizer_class must be a string or null"),
    ("tokenizer_config.json", {"tokenizer_class": "BertTokenizer"}, "tokenizer_class is 'BertTokenizer'"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": {"content": "<x>"}}}, "has the key 'x'"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"300": {"special": True}}},
     "added_tokens_decoder.300.content is missing"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"300": "<x>"}}, "added_tokens_decoder.300 must be an object"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"300": {"content": "<x>", "single_word": True}}},
     "added_tokens_decoder.300.single_word is true"),
    ("tokenizer_config.json", {"extra_special_tokens": [7]}, "extra_special_tokens[0] must be a string"),
    ("tokenizer_config.json", {"image_token": {"__type": "AddedToken"}}, "image_token.content is missing"),
    ("special_tokens_map.json", {"eos_token": 5}, "eos_token must be a string or null"),
    ("special_tokens_map.json", {"additional_special_tokens": "<x>"}, "additional_special_tokens must be a list"),
    ("added_tokens.json", {"<x>": "300"}, "must be an id"),
    ("added_tokens.json", {"<x>": 300, "<y>": 300}, "gives id 300 to both '<x>' and '<y>'"),
    ("added_tokens.json", ["<x>"], "should hold a JSON object"),
]


@pytest.mark.parametrize("name, content, message", SETTINGS_CASES)
def test_malformed_settings_file_names_file_and_key(tmp_path, name, content, message):
    write_vocab_and_merges(tmp_path)
    (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
    refused(tmp_path, name, message)


def test_settings_file_that_is_not_utf8(tmp_path):
    write_vocab_and_merges(tmp_path)
    (tmp_path / "chat_template.jinja").write_bytes(b"{{ 'caf\xe9' }}")
    refused(tmp_path, "chat_template.jinja", "not UTF-8")


# -- 2b. fuzzing: random damage to valid files ends in a tokenizer or one error naming the file --------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "(", CATASTROPHIC, "Regex", "ByteLevel", "Sequence", "<s>", "▁", "a b"])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, path=()):
    """Every place in a JSON tree, descending into only the first 3 entries of big containers (vocab, merges)."""
    yield path
    if isinstance(node, (dict, list)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        for key in keys[:3] if len(keys) > 8 else keys:
            yield from _paths(node[key], path + (key,))


def _damage(tree, draw):
    """Damage a JSON tree one to three times: at a place drawn from all of them (the top level stays an object:
    test_tokenizer_pretrained checks files that are not), replace the value, delete it, or insert junk beside it."""
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(tree))[1:]
        if not paths:
            break
        *parent_path, last = draw(st.sampled_from(paths))
        parent = tree
        for step in parent_path:
            parent = parent[step]
        operation = draw(st.sampled_from(["replace", "delete", "insert"]))
        if operation == "replace":
            parent[last] = draw(_json_values)
        elif operation == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(_json_values)
        else:
            parent.insert(last, draw(_json_values))
    return tree


FUZZ = settings(max_examples=40)


@FUZZ
@given(which=st.sampled_from(["byte_level", "metaspace"]), data=st.data())
def test_damaged_tokenizer_json_loads_or_names_the_file(tmp_path_factory, which, data):
    spec = byte_level_spec() if which == "byte_level" else metaspace_spec()
    directory = write_spec(tmp_path_factory.mktemp("fuzz"), _damage(json.loads(spec), data.draw))
    load_or_refuse(directory, "tokenizer.json")


SETTINGS = {
    "tokenizer_config.json": {
        "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}, "eos_token": "<|im_end|>",
        "add_bos_token": True, "chat_template": [{"name": "default", "template": "{{ messages }}"}],
        "added_tokens_decoder": {"300": {"content": "<|im_start|>", "special": True, "lstrip": False},
                                 "301": {"content": "<|im_end|>", "special": True}},
        "extra_special_tokens": ["<|im_start|>"], "model_max_length": 1024},
    "special_tokens_map.json": {"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>", "<x>"]},
    "added_tokens.json": {"<|im_start|>": 300, "<|im_end|>": 301},
}


@FUZZ
@given(name=st.sampled_from(list(SETTINGS)), data=st.data())
def test_damaged_settings_file_loads_or_names_the_file(tmp_path_factory, name, data):
    directory = write_vocab_and_merges(tmp_path_factory.mktemp("fuzz"))
    (directory / name).write_text(json.dumps(_damage(json.loads(json.dumps(SETTINGS[name])), data.draw)))
    load_or_refuse(directory, name)


def test_fuzz_bases_are_valid(tmp_path):
    """The undamaged files the fuzzers start from load (so the fuzzers test damage, not a broken base)."""
    for which, spec in (("byte_level", byte_level_spec()), ("metaspace", metaspace_spec())):
        assert isinstance(load_or_refuse(write_spec(tmp_path / which, spec), "tokenizer.json"), Tokenizer)
    for name, content in SETTINGS.items():
        directory = write_vocab_and_merges(tmp_path / name)
        (directory / name).write_text(json.dumps(content))
        tok = load_or_refuse(directory, name)
        # one token: a special token (named in the config or flagged special) or an added one (added_tokens.json)
        assert isinstance(tok, Tokenizer) and len(tok.encode("<|im_start|>", allowed_special="all")) == 1


# -- 3. patterns from files run with a time limit ----------------------------------------------------------------


def _with_split(pattern: str) -> str:
    return json.dumps(_edit(byte_level_spec(), lambda d: d.update(pre_tokenizer={
        "type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})))


def _assert_refused_in_time(call, *fragments):
    start = time.process_time()
    with time_limit(LIMIT), pytest.raises(TokenizerError) as caught:
        call()
    assert time.process_time() - start < PATTERN_SECONDS_BASE + 2
    assert all(fragment in str(caught.value) for fragment in fragments), str(caught.value)


def test_catastrophic_split_pattern_is_refused_naming_the_file(tmp_path):
    tok = Tokenizer.from_pretrained(write_spec(tmp_path, _with_split(CATASTROPHIC)))
    _assert_refused_in_time(lambda: tok.encode(SLOW_TEXT), "tokenizer.json: pre_tokenizer.pretokenizers[0]"
                                                           ".pattern.Regex", "budget")


def test_catastrophic_replace_normalizer_is_refused_naming_the_file(tmp_path):
    spec = _edit(byte_level_spec(), lambda d: d.update(normalizer={
        "type": "Replace", "pattern": {"Regex": CATASTROPHIC}, "content": "b"}))
    tok = Tokenizer.from_pretrained(write_spec(tmp_path, spec))
    _assert_refused_in_time(lambda: tok.encode(SLOW_TEXT), "tokenizer.json: normalizer.pattern.Regex")


def test_catastrophic_nanollm_pattern_is_refused_naming_the_file(tmp_path):
    path = train_bpe("ab ba", 258, pattern="gpt2").save(tmp_path)
    record = json.loads(path.read_text())
    record["pattern"] = CATASTROPHIC + "|."
    path.write_text(json.dumps(record))
    tok = Tokenizer.from_pretrained(tmp_path)
    _assert_refused_in_time(lambda: tok.encode(SLOW_TEXT), f"{path}: pattern")


def test_catastrophic_training_pattern_is_refused():
    _assert_refused_in_time(lambda: train_bpe(SLOW_TEXT, 300, pattern=CATASTROPHIC + "|."), "training:", CATASTROPHIC)


def test_replace_content_is_literal(tmp_path):
    """tokenizers' Replace inserts its content as written; Python's re.sub would read "\\1" in it as a group."""
    spec = _edit(byte_level_spec(), lambda d: d.update(normalizer={
        "type": "Replace", "pattern": {"Regex": "(s)"}, "content": "\\1"}))
    directory = write_spec(tmp_path, spec)
    assert Tokenizer.from_pretrained(directory).encode("sing") == reference(directory).encode("sing").ids


# Qwen 2's pre-tokenizer (digits one by one): a legitimate pattern nanollm does not ship, so it runs under the limit.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def test_only_patterns_nanollm_ships_run_without_the_limit():
    assert not compile_regex(LLAMA3_PATTERN, "tokenizer.json").limited  # Llama 3's file spells it exactly
    assert compile_regex(QWEN2_PATTERN, "tokenizer.json").limited
    assert compile_regex(CATASTROPHIC, "tokenizer.json").limited


@pytest.mark.parametrize("name", [*NAMED_PATTERNS, "qwen2"])
def test_legitimate_huge_input_stays_far_inside_the_budget(name):
    """The budget's claim (guards.py): on the worst kind of input measured, random mixes that start a new match
    every character or two, each of these patterns, run with the limit on, needs under a fifth of its per-character
    allowance (the measured margin is 25x)."""
    import random

    import regex

    rng = random.Random(0)
    text = "".join(rng.choice("a 1!\n'é日\t.") for _ in range(200_000))
    pattern = TimedPattern(regex.compile(NAMED_PATTERNS.get(name, QWEN2_PATTERN)), name)
    start = time.process_time()
    pattern.findall(text)
    assert time.process_time() - start < (pattern_budget(text) - PATTERN_SECONDS_BASE) / 5


def test_legitimate_huge_input_encodes(tmp_path):
    """A million-character run and two megabytes of mixed text go through a limited pattern (Qwen 2's, in a Split
    pre-tokenizer) unrefused: the runs round-trip, and the mixed text gives tokenizers' ids. (It does not round-trip:
    "café" is an added token, which the ByteLevel decoder turns into b"caf\\xe9", as in tokenizers.)"""
    directory = write_spec(tmp_path, _with_split(QWEN2_PATTERN))
    tok = Tokenizer.from_pretrained(directory)
    for text in ["x" * 1_000_000, " " * 1_000_000]:
        assert tok.decode(tok.encode(text)) == text
    text = (SAMPLE * 40_000)[:2_000_000]
    assert tok.encode_prompt(text) == reference(directory).encode(text).ids


def test_text_a_split_pattern_does_not_match_is_kept(tmp_path):
    """tokenizers' Split(Isolated) keeps the text between matches as words of its own; findall alone would drop it."""
    directory = write_spec(tmp_path, _with_split("th"))
    ours, theirs = Tokenizer.from_pretrained(directory), reference(directory)
    for text in ["the thing xyz", "xyz", "", "ththx", " th"]:
        assert ours.encode_prompt(text) == theirs.encode(text).ids, text


# -- 4. empty added tokens are ignored, wherever they come from ----------------------------------------------------


def test_empty_added_token_in_tokenizer_json_is_ignored(tmp_path):
    spec = _edit(byte_level_spec(), lambda d: d["added_tokens"].append({
        "id": 400, "content": "", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
        "special": True}))
    directory = write_spec(tmp_path, spec)
    tok = Tokenizer.from_pretrained(directory)
    assert "" not in tok.special_tokens
    assert tok.encode_prompt("abc café") == reference(directory).encode("abc café").ids


@pytest.mark.parametrize("name, content", [
    ("tokenizer_config.json", {"added_tokens_decoder": {"300": {"content": ""}}}),
    ("tokenizer_config.json", {"eos_token": "", "extra_special_tokens": [""]}),
    ("special_tokens_map.json", {"additional_special_tokens": ["", "<x>"]}),
    ("added_tokens.json", {"": 300, "<x>": 301}),
])
def test_empty_added_token_in_settings_files_is_ignored(tmp_path, name, content):
    """Before the fix an empty token matched between every two characters: "ab" became [a, <empty>, b]."""
    write_vocab_and_merges(tmp_path)
    (tmp_path / name).write_text(json.dumps(content))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert "" not in tok.special_tokens
    plain = Tokenizer.from_pretrained(write_vocab_and_merges(tmp_path / "plain"))
    assert tok.encode_prompt("ab cd") == plain.encode_prompt("ab cd")


def test_empty_added_token_beside_tiktoken_ranks_is_ignored(tmp_path):
    """Llama 3's layout: tiktoken ranks in tokenizer.model, special tokens in tokenizer_config.json."""
    import base64

    (tmp_path / "tokenizer.model").write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b
                                                        for b in range(256)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"256": {"content": ""}, "257": {"content": "<|x|>"}}}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.special_tokens, tok.added_tokens) == ({}, {"<|x|>": 257})  # no "special": true, so an added token
    assert tok.encode("ab<|x|>") == tok.encode_prompt("ab<|x|>") == [97, 98, 257]


# -- 5. surrogates are encoded as tiktoken encodes them ------------------------------------------------------------


def test_repair_surrogates_is_tiktokens_rule():
    """A valid pair becomes its astral character, a lone surrogate U+FFFD (tiktoken's Encoding.encode fallback)."""
    assert repair_surrogates("\ud83d\udc4d") == "👍"
    assert repair_surrogates("a\ud83d") == "a\ufffd"
    assert repair_surrogates("\udc4d\ud83d!") == "\ufffd\ufffd!"
    assert repair_surrogates("plain") == "plain"


@pytest.mark.parametrize("which", ["byte_level", "metaspace"])
def test_surrogates_encode_as_their_repaired_text(tmp_path, which):
    """One place for every format: the ids of "\\ud83d\\udc4d" are those of 👍, of a lone one those of U+FFFD."""
    tok = Tokenizer.from_pretrained(write_spec(tmp_path, byte_level_spec() if which == "byte_level"
                                               else metaspace_spec()))
    assert tok.encode("x\ud83d\udc4d") == tok.encode("x👍")
    assert tok.encode("x\ud83d y") == tok.encode("x\ufffd y")
    assert tok.model.encode_ordinary("\udc4d", True) == tok.model.encode_ordinary("\ufffd", True)


# -- 6. tokenizer.json files that tokenizers writes load and encode as tokenizers does -----------------------------

_texts = st.lists(st.one_of(st.sampled_from(["ing", "sing", "café", " things", "<|endoftext|>", "xyzzy", " xyzzy",
                                             "12", " ", "\n"]),
                            st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=6)),
                  max_size=8).map("".join)


PAIRS = ["byte_level", "byte_level_ignore_merges", "metaspace_ignore_merges"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return {which: _pair(tmp_path_factory.mktemp(which), which) for which in PAIRS}


def _pair(directory: Path, which: str):
    """(ours, tokenizers') for the small byte-level spec ("ing" added although merges make it), and for both specs
    with ``ignore_merges`` on and whole words added to the vocabulary that merges would not make."""
    spec = json.loads(metaspace_spec() if which.startswith("metaspace") else byte_level_spec())
    if which.endswith("ignore_merges"):
        spec["model"]["ignore_merges"] = True
        vocab = spec["model"]["vocab"]
        for word in (["xyzzy", "Ġxyzzy", "singing"] if which.startswith("byte") else ["▁xyzzy", "▁singing"]):
            vocab.setdefault(word, len(vocab))
    write_spec(directory, spec)
    return Tokenizer.from_pretrained(directory), reference(directory)


@settings(max_examples=60)
@given(which=st.sampled_from(PAIRS), text=_texts)
def test_tokenizers_files_encode_as_tokenizers_does(pairs, which, text):
    ours, theirs = pairs[which]
    assert ours.encode_prompt(text) == theirs.encode(text).ids
    if which.startswith("byte_level"):
        ids = theirs.encode(text).ids
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=False)


def test_added_token_that_merges_also_make(tmp_path):
    """Hand-checked: "ing" is a merge-made vocabulary entry and an added token. Before the fix the file was refused
    ("merge 'in' + 'g' makes a token that is not in the vocabulary"); now "singing" is s + ing + ing, as tokenizers
    cuts the added token out first, and "ing" keeps its vocabulary id."""
    directory = write_spec(tmp_path, byte_level_spec())
    ours, theirs = Tokenizer.from_pretrained(directory), reference(directory)
    ing = json.loads(byte_level_spec())["model"]["vocab"]["ing"]
    assert ours.added_tokens["ing"] == theirs.token_to_id("ing") == ing
    assert ours.encode_prompt("singing") == theirs.encode("singing").ids == [ours.encode("s")[0], ing, ing]


def test_ignore_merges_is_honoured(pairs):
    """With ignore_merges a word that is in the vocabulary is one token, whatever the merges would make of it."""
    ours, theirs = pairs["byte_level_ignore_merges"]
    assert ours.encode("xyzzy xyzzy") == theirs.encode("xyzzy xyzzy").ids
    assert len(ours.encode("xyzzy xyzzy")) == 2
    ours, theirs = pairs["metaspace_ignore_merges"]  # the whole segment "▁xyzzy" is the word here (split=False)
    assert ours.encode_prompt("xyzzy") == theirs.encode("xyzzy").ids == [1, theirs.token_to_id("▁xyzzy")]


# -- 7. the command line: one line on stderr, exit status 1, no traceback ----------------------------------------


def _cli(*args, stdin: bytes = b""):
    return subprocess.run([sys.executable, "-m", "nanollm.tokenizer", *map(os.fsdecode, args)], input=stdin,
                          capture_output=True, check=False, timeout=60)


def _cli_case(tmp_path, case):
    """(arguments, stdin, what the error line must contain) for each hostile command line."""
    good = tmp_path / "good"
    train_bpe("aaabdaaabac", 260, pattern="gpt2").save(good)
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    catastrophic = tmp_path / "catastrophic.txt"
    catastrophic.write_text(SLOW_TEXT)
    fifo_tokenizer = tmp_path / "fifo_tokenizer"
    fifo_tokenizer.mkdir()
    os.mkfifo(fifo_tokenizer / "tokenizer.json")
    train = ["train", "--vocab-size", "300", "--output", tmp_path / "out", "--input"]
    return {
        "stdin not UTF-8": (["encode", "--tokenizer", good], b"ok \xff", "standard input is not UTF-8"),
        "argument not UTF-8": (["encode", "--tokenizer", good, os.fsdecode(b"ok \xff")], b"",
                               "the text argument is not UTF-8"),
        "input is a FIFO": (train + [fifo], b"", "is a FIFO"),
        "input missing": (train + [tmp_path / "missing.txt"], b"", "missing.txt"),
        "bad pattern": (train + [catastrophic, "--pattern", "("], b"", "is not a valid regex"),
        "catastrophic pattern": (train + [catastrophic, "--pattern", CATASTROPHIC + "|."], b"", "budget"),
        "tokenizer.json a FIFO": (["encode", "--tokenizer", fifo_tokenizer, "hi"], b"", "tokenizer.json is a FIFO"),
        "tokenizer missing": (["decode", "--tokenizer", tmp_path / "nowhere", "1"], b"", "is not a directory"),
        "ids not integers": (["decode", "--tokenizer", good, "1", "x"], b"", "ids must be integers"),
        "id out of range": (["decode", "--tokenizer", good, "99999"], b"", "not in the vocabulary"),
    }[case]


@pytest.mark.parametrize("case", ["stdin not UTF-8", "argument not UTF-8", "input is a FIFO", "input missing",
                                  "bad pattern", "catastrophic pattern", "tokenizer.json a FIFO", "tokenizer missing",
                                  "ids not integers", "id out of range"])
def test_cli_hostile_input_is_one_line(tmp_path, case):
    args, stdin, expected = _cli_case(tmp_path, case)
    start = time.perf_counter()
    result = _cli(*args, stdin=stdin)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert expected in stderr, stderr
    assert time.perf_counter() - start < LIMIT
    assert not (tmp_path / "out").exists()


def test_cli_train_refuses_to_overwrite_its_input(tmp_path):
    """train --input out/nanollm_tokenizer.json --output out: the corpus is not replaced by the tokenizer."""
    out = tmp_path / "out"
    out.mkdir()
    corpus = out / NANOLLM_TOKENIZER_FILE
    corpus.write_text("the cat sat on the mat")
    result = _cli("train", "--input", corpus, "--vocab-size", "270", "--output", out, "--pattern", "gpt2")
    assert result.returncode == 1 and "it is the input" in result.stderr.decode()
    assert corpus.read_text() == "the cat sat on the mat"
