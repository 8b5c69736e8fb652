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
from tests.test_tokenizer_byte_level import EDGE_CASES, assigned_text, tricky_text

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
    directory = tmp_path_factory.mktemp("gpt2_source")
    shutil.copy(shared_file("tokenizers/gpt2/encoder.json"), directory / "vocab.json")
    shutil.copy(shared_file("tokenizers/gpt2/vocab.bpe"), directory / "merges.txt")
    return directory


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


def test_chat_template_is_read(gpt2_saved, tmp_path):
    directory = tmp_path / "chat"
    shutil.copytree(gpt2_saved, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(directory).chat_template == config["chat_template"]
    assert Tokenizer.from_pretrained(gpt2_saved).chat_template is None


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
