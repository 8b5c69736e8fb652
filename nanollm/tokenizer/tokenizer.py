"""``Tokenizer``: the one object the rest of nanollm uses, whatever file format the vocabulary came from.

A Tokenizer joins three things that the other modules build:

* a *model* with ``encode_ordinary(text, at_start) -> ids``: ``ByteLevelBPE`` (GPT-2, tiktoken, Llama 3, trained
  tokenizers) or ``SentencePieceModel`` / a Metaspace front end over ``PieceBPE`` (Llama 2);
* the special tokens and the policy for finding them in text, and the added tokens that are not special, which
  are found in any text (``special.py``);
* ``DecodeRules`` saying what bytes each id stands for (``decoding.py``).

Plus what a model expects around a prompt (``prompt_prefix``/``prompt_suffix``, e.g. Llama's BOS) and the chat
template from tokenizer_config.json. Loading by directory lives in ``loading.py``.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from .decoding import DecodeRules, StreamDecoder, bytes_to_text, decode_bytes
from .errors import TokenizerError
from .special import AddedVocabulary, refuse_disallowed, resolve_policy, special_regex, split_on_special


class EncodingModel(Protocol):
    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]: ...


class Tokenizer:
    """Text <-> token ids.

    >>> tok = Tokenizer.from_pretrained("path/to/gpt2")
    >>> tok.encode("Hello world")
    [15496, 995]
    >>> tok.decode([15496, 995])
    'Hello world'
    """

    def __init__(
        self,
        model: EncodingModel,
        decode_rules: DecodeRules,
        *,
        special_tokens: dict[str, int] | None = None,
        added_tokens: dict[str, int] | None = None,
        strips: dict[str, tuple[bool, bool]] | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        prompt_prefix: Sequence[int] = (),
        prompt_suffix: Sequence[int] = (),
        chat_template: str | None = None,
        name: str = "",
    ):
        self.decode_rules = decode_rules
        # An empty special token is dropped, as tokenizers drops an empty added token: the regex that cuts special
        # tokens out of text would match it between every two characters.
        self.special_tokens: dict[str, int] = {text: i for text, i in (special_tokens or {}).items() if text}
        # Added tokens that are not special ("special": false: Gemma 3's "\n\n", Qwen3's "<think>") are cut out of
        # every text, whatever the special-token policy: the model sees them first (special.AddedVocabulary).
        self.added_tokens = {text: i for text, i in (added_tokens or {}).items()
                             if text and text not in self.special_tokens}
        # Added tokens that take the white space beside them: text -> (lstrip, rstrip) (special.split_on_special).
        self.strips = dict(strips or {})
        self.model = AddedVocabulary(model, self.added_tokens, self.strips) if self.added_tokens else model
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.prompt_prefix = tuple(prompt_prefix)
        self.prompt_suffix = tuple(prompt_suffix)
        self.chat_template = chat_template
        self.name = name
        self.vocab_size = max([*decode_rules.token_bytes, *self.special_tokens.values()]) + 1
        for text, i in {**self.added_tokens, **self.special_tokens}.items():
            if i not in decode_rules.token_bytes:
                raise TokenizerError(f"added token {text!r} has id {i}, which has no decoding")
        # Compiled special-token regexes, by token set: callers reuse one or two policies, so this stays tiny.
        self._special_patterns: dict[frozenset[str], object] = {}

    # -- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory) -> "Tokenizer":
        """Load the tokenizer files in ``directory`` (see ``loading.py`` for which files are tried, in what order)."""
        from .loading import from_pretrained

        return from_pretrained(directory)

    # -- encoding ------------------------------------------------------------------------------------------------

    def encode(
        self,
        text: str,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
    ) -> list[int]:
        """Token ids for ``text``. By default special-token text is encoded as the ordinary characters it is made of.

        ``allowed_special``: "all" or a set of special tokens to turn into their ids.
        ``disallowed_special``: "all"/"raise" or a set of special tokens whose presence raises TokenizerError.
        (See ``special.py`` for why the default is not tiktoken's "raise".)
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        allowed, disallowed = resolve_policy(self.special_tokens, allowed_special, disallowed_special)
        if disallowed:
            refuse_disallowed(text, self._pattern(disallowed))
        if not allowed:
            return self.model.encode_ordinary(text, True)
        ids: list[int] = []
        for start, piece, is_special in split_on_special(text, self._pattern(allowed), self.strips):
            if is_special:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.model.encode_ordinary(piece, start == 0))
        return ids

    def split_special(self, text: str):
        """``text`` cut at every special token, as encode with allowed_special="all" cuts it: (start offset, piece,
        is_special) in order. For callers that encode the ordinary pieces themselves (chat.ChatTemplate.encode)."""
        return split_on_special(text, self._pattern(frozenset(self.special_tokens)), self.strips)

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a model expects for a prompt: special tokens parsed, plus this model's BOS (or other template).

        Matches ``transformers.AutoTokenizer.from_pretrained(dir)(text)["input_ids"]`` for the directory loaded.
        """
        return [*self.prompt_prefix, *self.encode(text, allowed_special="all"), *self.prompt_suffix]

    def encode_batch(self, texts: Iterable[str], **kwargs) -> list[list[int]]:
        """``encode`` for each text (same keyword arguments)."""
        return [self.encode(text, **kwargs) for text in texts]

    def token_count(self, text: str, **kwargs) -> int:
        """How many tokens ``encode(text, **kwargs)`` makes."""
        return len(self.encode(text, **kwargs))

    def _pattern(self, tokens: frozenset[str]):
        pattern = self._special_patterns.get(tokens)
        if pattern is None:
            pattern = self._special_patterns[tokens] = special_regex(tokens)
        return pattern

    # -- decoding ------------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes ``ids`` stand for (may end mid-character)."""
        return decode_bytes(self.decode_rules, ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ``ids``; invalid UTF-8 becomes U+FFFD (see ``decoding.py`` for the exact rule per format)."""
        return bytes_to_text(self.decode_rules, self.decode_bytes(ids))

    def token_to_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for in the middle of a text (SentencePiece's "▁Hello" -> b" Hello")."""
        try:
            return self.decode_rules.token_bytes[token_id]
        except (KeyError, TypeError):
            raise TokenizerError(f"token id {token_id!r} is not in the vocabulary") from None

    def stream_decoder(self) -> StreamDecoder:
        """An incremental decoder: ``push(id)`` returns newly completed text, ``flush()`` the remainder."""
        return StreamDecoder(self.decode_rules)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name or type(self.model).__name__}, vocab_size={self.vocab_size})"
