"""``TokenizerParts``: what every tokenizer format is read into, and all that a ``Tokenizer`` is built from.

Each format fills in what its file holds (``hf_json.py`` from tokenizer.json, ``saving.py`` from
nanollm_tokenizer.json, ``loading.py`` for tokenizer.model, vocab.json + merges.txt and tiktoken ranks), and
``settings.py`` adds what tokenizer_config.json says beside it: the BOS/EOS ids, the chat template. The record sits at
the bottom of the package, so that no format needs the ``Tokenizer`` class and ``Tokenizer(parts)`` needs no format.

``strips``, ``prompt_prefix`` and ``prompt_suffix`` are None where the file does not speak to them, and then the
settings decide (``settings.with_settings``): a tokenizer.json's post-processor says what surrounds a prompt, a
tiktoken file does not.

The parts are checked where they are made, inside the loader that names the file on error: an added or special token
whose id decodes to nothing is refused here, not when the Tokenizer first meets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .decoding import DecodeRules
from .errors import TokenizerError


class EncodingModel(Protocol):
    """What cuts ordinary text (no special tokens in it) into ids: ``byte_level.ByteLevelBPE``,
    ``sentencepiece.SentencePieceModel``, ``hf_json.MetaspaceModel``..."""

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]: ...


@dataclass
class TokenizerParts:
    """The pieces of one tokenizer, with an example value each (GPT-2's, Llama 2's, Phi-3's)."""

    model: EncodingModel
    decode_rules: DecodeRules  # what bytes each id stands for (decoding.py)
    special_tokens: dict[str, int] = field(default_factory=dict)  # {"<|endoftext|>": 50256}: text -> id, found in
    # text only as the special-token policy allows (special.py)
    added_tokens: dict[str, int] = field(default_factory=dict)  # {"<think>": 151667}: not special, found in any text
    strips: dict[str, tuple[bool, bool]] | None = None  # {"<|end|>": (False, True)}: (lstrip, rstrip) of the added
    # tokens that take the white space beside them (special.split_on_special)
    prompt_prefix: list[int] | None = None  # [1]: Llama 2's BOS before every prompt
    prompt_suffix: list[int] | None = None  # []: ids after every prompt
    bos_token_id: int | None = None  # 1
    eos_token_id: int | None = None  # 2
    chat_template: str | None = None  # the Jinja template of tokenizer_config.json (chat.py)
    name: str = ""  # "tokenizer.json": the file the parts came from

    def __post_init__(self):
        # An empty special token is dropped, as tokenizers drops an empty added token: the regex that cuts special
        # tokens out of text would match it between every two characters.
        self.special_tokens = {text: i for text, i in self.special_tokens.items() if text}
        # Added tokens that are not special ("special": false: Gemma 3's "\n\n", Qwen3's "<think>") are cut out of
        # every text, whatever the special-token policy: the model sees them first (special.AddedVocabulary).
        self.added_tokens = {text: i for text, i in self.added_tokens.items()
                             if text and text not in self.special_tokens}
        for text, i in {**self.added_tokens, **self.special_tokens}.items():
            if i not in self.decode_rules.token_bytes:
                raise TokenizerError(f"added token {text!r} has id {i}, which has no decoding")
