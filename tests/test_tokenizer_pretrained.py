"""Loading by directory: what transformers' save_pretrained writes must give AutoTokenizer's ids on encode_prompt.

Directories are built in tmp_path with transformers from the shared GPT-2 and Llama 2 files. Without the protobuf
package transformers cannot convert tokenizer.model itself, so the Llama directory is built the way its converter
does it (vocabulary from the sentencepiece package, merges from transformers' own ``generate_merges``), with
``add_bos_token=True`` as in Llama 2's published tokenizer_config.json.
"""
import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from tests.conftest import shared_file
from tests.test_tokenizer_byte_level import EDGE_CASES, assigned_text, shared_directory, tricky_text

transformers = pytest.importorskip("transformers")

PROMPTS = EDGE_CASES + [
    "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|> c",
    "<s>Hello",
    "Hello <s> x  y\n z</s>",
    " <s> leading",
    "[INST] Hi [/INST]",
]


@pytest.fixture(scope="module")
def gpt2_source(tmp_path_factory):
    """GPT-2 under Hugging Face's file names, as in the openai-community/gpt2 repository."""
    return shared_directory(tmp_path_factory, "gpt2_source", {"vocab.json": "tokenizers/gpt2/encoder.json",
                                                              "merges.txt": "tokenizers/gpt2/vocab.bpe"})


@pytest.fixture(scope="module")
def gpt2_saved(gpt2_source, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2_saved")
    transformers.GPT2Tokenizer.from_pretrained(gpt2_source).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_saved(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(shared_file("tokenizers/llama2/tokenizer.model")))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    directory = tmp_path_factory.mktemp("llama_saved")
    tokenizer = transformers.LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), add_bos_token=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("which", ["gpt2_saved", "llama_saved"])
def test_encode_prompt_matches_auto_tokenizer(which, request):
    directory = request.getfixturevalue(which)
    ours = Tokenizer.from_pretrained(directory)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    for text in PROMPTS:
        assert ours.encode_prompt(text) == reference(text)["input_ids"], text
    assert ours.bos_token_id == reference.bos_token_id
    assert ours.eos_token_id == reference.eos_token_id


def test_llama_prompt_starts_with_bos(llama_saved):
    """The point of encode_prompt: Llama's published config adds <s> (id 1); GPT-2 adds nothing."""
    assert Tokenizer.from_pretrained(llama_saved).encode_prompt("Hello world") == [1, 15043, 3186]


@settings(max_examples=60)
@given(st.one_of(st.text(max_size=40), tricky_text))
def test_llama_saved_random_prompts(llama_reference, text):
    ours, reference = llama_reference
    assert ours.encode_prompt(text) == reference(text)["input_ids"]


@pytest.fixture(scope="module")
def llama_reference(llama_saved):
    return Tokenizer.from_pretrained(llama_saved), transformers.AutoTokenizer.from_pretrained(llama_saved)


def test_gpt2_vocab_json_and_merges_txt(gpt2_source):
    """The source directory (no tokenizer.json, no config) loads through vocab.json + merges.txt."""
    ours = Tokenizer.from_pretrained(gpt2_source)
    reference = transformers.GPT2Tokenizer.from_pretrained(gpt2_source)
    for text in EDGE_CASES:
        assert ours.encode_prompt(text) == reference(text)["input_ids"]


@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_vocab_and_merges_follow_the_configs_add_prefix_space(gpt2_source, tmp_path, add_prefix_space):
    """GPT2Tokenizer's add_prefix_space (a space before each text that lacks one, "Hello" -> " Hello") is read from
    tokenizer_config.json beside vocab.json + merges.txt, as transformers reads it."""
    directory = tmp_path / "gpt2"
    shutil.copytree(gpt2_source, directory)
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": add_prefix_space}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    for text in PROMPTS:
        assert ours.encode_prompt(text) == reference(text)["input_ids"], text
    assert ours.encode("Hello") == ([18435] if add_prefix_space else [15496])  # " Hello" and "Hello" in GPT-2


@pytest.mark.parametrize("tokenizer_class, loads", [("GPT2TokenizerFast", True), ("Qwen2TokenizerFast", True),
                                                    ("RobertaTokenizer", False), ("LlamaTokenizerFast", False)])
def test_vocab_and_merges_of_an_unknown_class_are_refused_by_name(gpt2_source, tmp_path, tokenizer_class, loads):
    """vocab.json + merges.txt do not say how text is cut into words; the class named in tokenizer_config.json does.
    nanollm knows GPT-2's and Qwen 2's (with or without transformers' "Fast"); any other is one TokenizerError
    naming the file, the key and the class, not GPT-2's regex applied silently."""
    directory = tmp_path / "source"
    shutil.copytree(gpt2_source, directory)
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    if loads:
        assert Tokenizer.from_pretrained(directory).encode("Hello world") == [15496, 995]
        return
    with pytest.raises(TokenizerError) as caught:
        Tokenizer.from_pretrained(directory)
    message = str(caught.value)
    assert f"tokenizer_config.json: tokenizer_class is '{tokenizer_class}'" in message and "Qwen2Tokenizer" in message


def test_chat_template_is_read(gpt2_saved, tmp_path):
    directory = tmp_path / "chat"
    shutil.copytree(gpt2_saved, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(directory).chat_template == config["chat_template"]
    assert Tokenizer.from_pretrained(gpt2_saved).chat_template is None


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                                  "tokenizer.json", "vocab.json"])
@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "should hold a JSON object, not a list"),
    (b"{not json", "cannot parse"),
    (b"\xff\xfe{}", "cannot parse"),
])
def test_corrupt_side_files_are_a_tokenizer_error(gpt2_source, tmp_path, name, content, message):
    """Every JSON file of a tokenizer directory holds one object; anything else is a TokenizerError naming the file
    (a tokenizer.json written beside vocab.json + merges.txt is the file loaded first)."""
    directory = tmp_path / "corrupt"
    shutil.copytree(gpt2_source, directory)
    (directory / name).write_bytes(content)
    with pytest.raises(TokenizerError, match=message) as e:
        Tokenizer.from_pretrained(directory)
    assert name in str(e.value)


def test_empty_directory(tmp_path):
    assert load_tokenizer(tmp_path) is None
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizer.from_pretrained(tmp_path)


def test_cl100k_by_file_name(tmp_path):
    shutil.copy(shared_file("tokenizers/cl100k/cl100k_base.tiktoken"), tmp_path / "cl100k_base.tiktoken")
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Hello world") == [9906, 1917]  # the ids tiktoken's README shows for cl100k_base
    assert tok.special_tokens["<|endoftext|>"] == 100257


# -- Llama 3 layouts: cl100k's ranks stand in for Llama 3's (same format, same pattern family) -----------------------

LLAMA3_SPECIALS = {"<|begin_of_text|>": 100256, "<|end_of_text|>": 100257}


@pytest.fixture(scope="module")
def llama3_json(tmp_path_factory):
    """A tokenizer.json laid out as Llama 3's: Split(regex) + ByteLevel(use_regex=False), ignore_merges, made by
    transformers' own tiktoken converter from the shared cl100k ranks."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from nanollm.tokenizer.byte_level import LLAMA3_PATTERN

    directory = tmp_path_factory.mktemp("llama3_json")
    converter = TikTokenConverter(vocab_file=str(shared_file("tokenizers/cl100k/cl100k_base.tiktoken")),
                                  pattern=LLAMA3_PATTERN, extra_special_tokens=list(LLAMA3_SPECIALS))
    converter.converted().save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def llama3_pair(llama3_json):
    tokenizers = pytest.importorskip("tokenizers")
    return Tokenizer.from_pretrained(llama3_json), tokenizers.Tokenizer.from_file(str(llama3_json / "tokenizer.json"))


def test_llama3_style_tokenizer_json_matches_tokenizers(llama3_pair):
    ours, reference = llama3_pair
    for text in PROMPTS + ["<|begin_of_text|>Hi<|end_of_text|>"]:
        assert ours.encode_prompt(text) == reference.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == text


@settings(max_examples=100)
@given(st.one_of(assigned_text, tricky_text))
def test_llama3_style_tokenizer_json_random_text(llama3_pair, text):
    ours, reference = llama3_pair
    assert ours.encode_prompt(text) == reference.encode(text).ids


def test_llama3_style_tokenizer_model_in_tiktoken_format(tmp_path):
    """Llama 3's original tokenizer.model is tiktoken ranks, not a protobuf; specials come from the config."""
    tiktoken = pytest.importorskip("tiktoken")
    from nanollm.tokenizer.byte_level import LLAMA3_PATTERN, load_tiktoken_ranks

    ranks_path = shared_file("tokenizers/cl100k/cl100k_base.tiktoken")
    shutil.copy(ranks_path, tmp_path / "tokenizer.model")
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "add_bos_token": True,
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in LLAMA3_SPECIALS.items()},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Tokenizer.from_pretrained(tmp_path)
    reference = tiktoken.Encoding("llama3-like", pat_str=LLAMA3_PATTERN,
                                  mergeable_ranks=load_tiktoken_ranks(ranks_path), special_tokens=LLAMA3_SPECIALS)
    assert (ours.bos_token_id, ours.eos_token_id) == (100256, 100257)
    for text in EDGE_CASES:
        assert ours.encode_prompt(text) == [100256] + reference.encode(text, allowed_special="all")


# -- Added tokens beside vocab.json + merges.txt (a ChatML fine-tune of GPT-2, saved as a slow tokenizer would) ------

CHATML = ["<|im_start|>", "<|im_end|>"]
# "hello world" is new; "hello" is already GPT-2 token 31373, so it keeps that id but is still cut out of the text
# (" hello" becomes [Ġ, hello], not the single token " hello") -- except in the legacy layout, whose
# added_tokens.json lists only ids past the vocabulary; "café" decodes through GPT-2's byte map (é -> 0xE9).
PLAIN_ADDED = ["hello world", "hello", "café"]


def _write_slow_layout(directory, source, *, with_decoder: bool):
    """A GPT-2 directory with ChatML added, laid out as transformers 4's slow GPT2Tokenizer saved one.

    transformers 5 has no slow GPT2Tokenizer and saves tokenizer.json only, so its save is turned into the slow
    layout here: vocab.json + merges.txt, tokenizer_config.json with ``added_tokens_decoder`` (written by 4.34 and
    later; ``with_decoder=False`` gives the older layout without it), special_tokens_map.json, added_tokens.json.
    """
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML, "eos_token": "<|im_end|>"})
    tokenizer.add_tokens(PLAIN_ADDED)
    tokenizer.save_pretrained(directory)
    (directory / "tokenizer.json").unlink(missing_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(source / name, directory / name)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    decoder = {str(i): token.__getstate__() for i, token in tokenizer.added_tokens_decoder.items()}
    config["additional_special_tokens"] = config.pop("extra_special_tokens")
    named = {key: config[key] for key in ("bos_token", "eos_token", "unk_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps({**named, "additional_special_tokens": CHATML}))
    added = {token["content"]: int(i) for i, token in decoder.items() if int(i) >= 50257}
    (directory / "added_tokens.json").write_text(json.dumps(added))
    if with_decoder:
        config["added_tokens_decoder"] = decoder
    else:
        config["eos_token"] = "<|endoftext|>"  # special_tokens_map.json's "<|im_end|>" must win, as in transformers
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module", params=["added_tokens_decoder", "legacy_files"])
def chatml_pair(request, gpt2_source, tmp_path_factory):
    directory = _write_slow_layout(tmp_path_factory.mktemp(request.param), gpt2_source,
                                   with_decoder=request.param == "added_tokens_decoder")
    return Tokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory, use_fast=False)


CHATML_PROMPTS = [
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n",
    "say hello worldly, hello there, café au lait",
    " hello worldhello world<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|><|im_start|>> <|im_end",
]


def test_chatml_added_tokens_match_auto_tokenizer(chatml_pair):
    """Hand-checked ids: new tokens count up from GPT-2's vocabulary size (50257) in the order they were added
    (eos <|im_end|> first, then <|im_start|>, "hello world", "café"); encode_prompt, decode and the added vocabulary
    agree with transformers, which holds the first two special and the other two ordinary added tokens."""
    ours, reference = chatml_pair
    new = {"<|im_end|>": 50257, "<|im_start|>": 50258, "hello world": 50259, "café": 50260}
    assert {**ours.special_tokens, **ours.added_tokens} == reference.get_added_vocab()
    assert {t: reference.get_added_vocab()[t] for t in new} == new
    assert set(ours.special_tokens) == set(reference.all_special_tokens)
    assert (ours.bos_token_id, ours.eos_token_id) == (reference.bos_token_id, reference.eos_token_id) == (50256, 50257)
    for text in CHATML_PROMPTS + PROMPTS:
        ids = reference(text)["input_ids"]
        assert ours.encode_prompt(text) == ids, text
        assert ours.decode(ids) == reference.decode(ids), text


def test_chatml_use_fast_agrees(gpt2_source, tmp_path):
    """AutoTokenizer with use_fast=True loads the same directory (transformers 5 has one GPT2Tokenizer for both)."""
    directory = _write_slow_layout(tmp_path, gpt2_source, with_decoder=True)
    ours = Tokenizer.from_pretrained(directory)
    fast = transformers.AutoTokenizer.from_pretrained(directory, use_fast=True)
    for text in CHATML_PROMPTS:
        assert ours.encode_prompt(text) == fast(text)["input_ids"], text


chatml_text = st.lists(
    st.one_of(st.sampled_from(CHATML + PLAIN_ADDED + ["<|endoftext|>", "<|im", "_end|>", "hello", " world"]),
              st.text(max_size=8), tricky_text),
    max_size=12,
).map("".join)


@settings(max_examples=80)
@given(chatml_text)
def test_chatml_random_text_matches_auto_tokenizer(chatml_pair, text):
    ours, reference = chatml_pair
    ids = reference(text)["input_ids"]
    assert ours.encode_prompt(text) == ids
    assert ours.decode(ids) == reference.decode(ids)


def test_named_tokens_outside_the_vocabulary_get_new_ids(gpt2_source, tmp_path):
    """Only names in the config, no added_tokens_decoder: transformers adds bos, eos, unk, sep, pad, cls, mask, then
    the extras, each new one at the next id. So <|im_end|> (eos) is 50257, <pad> 50258, <|im_start|> 50259."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_source / name, tmp_path / name)
    config = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<pad>",
              "additional_special_tokens": CHATML}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Tokenizer.from_pretrained(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, use_fast=False)
    expected = {"<|endoftext|>": 50256, "<|im_end|>": 50257, "<pad>": 50258, "<|im_start|>": 50259}
    assert ours.special_tokens == reference.get_added_vocab() == expected
    assert ours.eos_token_id == reference.eos_token_id == 50257
    for text in CHATML_PROMPTS:
        assert ours.encode_prompt(text) == reference(text)["input_ids"], text


def test_encoder_json_names_load_the_same_added_tokens(gpt2_source, tmp_path):
    """OpenAI's file names (encoder.json + vocab.bpe) with the same settings files give the same tokenizer;
    transformers cannot load these names, so the reference is our own load of vocab.json + merges.txt (which the
    tests above compare with transformers)."""
    directory = _write_slow_layout(tmp_path, gpt2_source, with_decoder=True)
    ours = Tokenizer.from_pretrained(directory)
    (directory / "vocab.json").rename(directory / "encoder.json")
    (directory / "merges.txt").rename(directory / "vocab.bpe")
    renamed = Tokenizer.from_pretrained(directory)
    assert renamed.special_tokens == ours.special_tokens
    for text in CHATML_PROMPTS:
        assert renamed.encode_prompt(text) == ours.encode_prompt(text)
