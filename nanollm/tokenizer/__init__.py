"""nanollm's tokenizers: one BPE algorithm, several vocabulary formats, exact parity with the reference libraries.

Reading order, from the bottom up: each file imports only files listed above it (tests/test_tokenizer_layers.py
checks this list against the imports).

the edges, and the data every layer shares:
    errors.py         TokenizerError, and reading a tokenizer's files: each value checked for the type it must have
    guards.py         surrogates repaired as tiktoken does; patterns from files run under a time limit
    bpe.py            the merge algorithm every format shares, and the word cache in front of it
    long_words.py     a huge word cut where no token spans, its parts merged all together in NumPy
    decoding.py       ids -> bytes -> text, whole or streamed token by token
    special.py        special tokens and the policy that keeps user text from injecting them
    parts.py          TokenizerParts: what every format is read into, and all a Tokenizer is built from
the formats:
    byte_level.py     GPT-2 / tiktoken byte-level BPE (regex pre-tokenization, encoder.json, *.tiktoken)
    pre_tokenizers.py tokenizers' pre-tokenizer steps (Split, Digits, ByteLevel, Metaspace) cutting text into words
    model_proto.py    Llama 2's tokenizer.model: the ModelProto message, parsed from the protobuf bytes by hand
    sentencepiece.py  SentencePiece's BPE over characters, its normalizer and decode rules
    hf_json.py        Hugging Face tokenizer.json (byte-level and Metaspace BPE)
    saving.py         nanollm's own versioned tokenizer file
    train.py          learning a byte-level BPE from text, into that file
loading a directory:
    settings.py       what tokenizer_config.json and the files beside it mean (BOS/EOS, added tokens, chat template)
    loading.py        which files in a directory mean which format
on top:
    tokenizer.py      the Tokenizer object the engine uses, and from_pretrained / load_tokenizer / load_tiktoken
    __main__.py       python -m nanollm.tokenizer train|encode|decode
"""
from .errors import TokenizerError
from .tokenizer import Tokenizer, from_pretrained, load_tiktoken, load_tokenizer

__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "from_pretrained", "load_tiktoken"]
