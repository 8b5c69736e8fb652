"""nanollm's tokenizers: one BPE algorithm, several vocabulary formats, exact parity with the reference libraries.

Reading order:
    bpe.py            the merge algorithm every format shares
    byte_level.py     GPT-2 / tiktoken byte-level BPE (regex pre-tokenization, encoder.json, *.tiktoken)
    sentencepiece.py  Llama 2's tokenizer.model, parsed from the protobuf bytes by hand
    pre_tokenizers.py tokenizers' pre-tokenizer steps (Split, Digits, ByteLevel, Metaspace) cutting text into words
    hf_json.py        Hugging Face tokenizer.json (byte-level and Metaspace BPE)
    special.py        special tokens and the policy that keeps user text from injecting them
    decoding.py       ids -> bytes -> text, whole or streamed token by token
    tokenizer.py      the Tokenizer object the engine uses
    loading.py        which files in a directory mean which format
    train.py          learning a byte-level BPE from text
    saving.py         nanollm's own versioned tokenizer file
    __main__.py       python -m nanollm.tokenizer train|encode|decode

and at the edges, where input from the world comes in:
    errors.py         TokenizerError, and reading a tokenizer's files: each value checked for the type it must have
    guards.py         surrogates repaired as tiktoken does; patterns from files run under a time limit
"""
from .errors import TokenizerError
from .loading import from_pretrained, load_tiktoken, load_tokenizer
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "from_pretrained", "load_tiktoken"]
