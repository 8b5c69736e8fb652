"""The real tokenizer.json files in ../shared/data (Llama 3.2, Qwen3, Mistral v0.1, Gemma 3) encode and decode as the
tokenizers library reads the same file.

Each family exercises a different pipeline: Llama 3.2 a Split regex then ByteLevel; Qwen3 an NFC normalizer before
it; Mistral v0.1 the legacy Prepend + Replace SentencePiece-as-BPE layout; Gemma 3 a Replace normalizer, a Split
pre-tokenizer and thousands of added tokens, most of them not special (whitespace runs such as "\\n\\n", which
decode to their text). Decoding is compared with skip_special_tokens as nanollm's rule for the format says: a
byte-level tokenizer shows special tokens as their text, a SentencePiece-style one shows nothing for them.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import load_tokenizer
from tests.conftest import shared_file
from tests.test_tokenizer_byte_level import EDGE_CASES, assigned_text, tricky_text

tokenizers = pytest.importorskip("tokenizers")

# family -> whether its special tokens decode to nothing (SentencePiece-style) rather than their text (byte-level)
FAMILIES = {"llama3.2": False, "qwen3": False, "mistral-v0.1": True, "gemma3": True}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request):
    directory = shared_file(f"tokenizers/{request.param}")
    reference = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    return load_tokenizer(directory), reference, FAMILIES[request.param]


def check(pair, text):
    ours, reference, hide_special = pair
    ids = ours.encode(text, allowed_special="all")
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ours.encode_prompt(text) == reference.encode(text).ids  # with the post-processor's BOS
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=hide_special)


@pytest.mark.parametrize("text", EDGE_CASES + ["<start_of_turn>user\nhi<end_of_turn>\n", "<|im_start|>a<|im_end|>",
                                               "<|begin_of_text|>x<|eot_id|>", "<s>[INST] a [/INST]</s>",
                                               "tabs\t\tand\n\n\nnewlines    and <unused0>"])
def test_edge_cases_equal_tokenizers(pair, text):
    check(pair, text)


@settings(max_examples=40)
@given(text=st.one_of(assigned_text, tricky_text))
def test_random_text_equals_tokenizers(pair, text):
    check(pair, text)
