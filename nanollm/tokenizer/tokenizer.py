"""``Tokenizer``: the one object the rest of nanollm uses, whatever file format the vocabulary came from.

A Tokenizer joins the ``TokenizerParts`` (parts.py) that a format was read into:

* a *model* with ``encode_ordinary(text, at_start) -> ids``: ``ByteLevelBPE`` (GPT-2, tiktoken, Llama 3, trained
  tokenizers) or ``SentencePieceModel`` / a Metaspace front end over ``PieceBPE`` (Llama 2);
* the special tokens and the policy for finding them in text, and the added tokens that are not special, which
  are found in any text (``special.py``);
* ``DecodeRules`` saying what bytes each id stands for (``decoding.py``).

Plus what a model expects around a prompt (``prompt_prefix``/``prompt_suffix``, e.g. Llama's BOS) and the chat
template from tokenizer_config.json. ``loading.py`` says which files in a directory are read, and how; the functions
at the end of this module (``from_pretrained``, ``load_tokenizer``, ``load_tiktoken``) make Tokenizers of what it reads.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from . import loading
from .decoding import StreamDecoder, bytes_to_text, decode_bytes
from .errors import TokenizerError
from .parts import TokenizerParts
from .special import AddedVocabulary, refuse_disallowed, resolve_policy, special_regex, split_on_special


class Tokenizer:
    """Text <-> token ids.

    >>> tok = Tokenizer.from_pretrained("path/to/gpt2")
    >>> tok.encode("Hello world")
    [15496, 995]
    >>> tok.decode([15496, 995])
    'Hello world'
    """

    def __init__(self, parts: TokenizerParts):
        """``parts``: what a format was read into, checked where it was made (parts.py)."""
        self.decode_rules = parts.decode_rules
        self.special_tokens = parts.special_tokens
        self.added_tokens = parts.added_tokens
        self.strips = dict(parts.strips or {})  # added token -> (lstrip, rstrip) (special.split_on_special)
        self.model = AddedVocabulary(parts.model, self.added_tokens, self.strips) if self.added_tokens else parts.model
        self.bos_token_id = parts.bos_token_id
        self.eos_token_id = parts.eos_token_id
        self.prompt_prefix = tuple(parts.prompt_prefix or ())
        self.prompt_suffix = tuple(parts.prompt_suffix or ())
        self.chat_template = parts.chat_template
        self.name = parts.name
        self.vocab_size = max([*self.decode_rules.token_bytes, *self.special_tokens.values()]) + 1
        # Compiled special-token regexes, by token set: callers reuse one or two policies, so this stays tiny.
        self._special_patterns: dict[frozenset[str], object] = {}

    @classmethod
    def from_pretrained(cls, directory) -> Tokenizer:
        """Load the tokenizer files in ``directory`` (see ``loading.py`` for which files are tried, in what order)."""
        return cls(loading.read_directory(directory))

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

    def pieces(self, ids: list[int]) -> list[bytes]:
        """The bytes each id adds to the decoded text, in order: joined they are ``decode_bytes(ids)`` exactly.

        An id's bytes are ``token_to_bytes`` except while decoding is at its start, where SentencePiece's first piece
        drops its dummy-prefix space (decoding.py): there a piece is what ``decode_bytes`` gives for the id alone, and
        the start lasts until the first id that is not a start id such as <s>.
        Example (GPT-2): ids of "Hello world" [15496, 995] -> [b"Hello", b" world"].
        """
        first = next((k for k, i in enumerate(ids) if i not in self.decode_rules.start_ids), len(ids))
        return [self.decode_bytes([i]) if k <= first else self.token_to_bytes(i) for k, i in enumerate(ids)]

    def stream_decoder(self) -> StreamDecoder:
        """An incremental decoder: ``push(id)`` returns newly completed text, ``flush()`` the remainder."""
        return StreamDecoder(self.decode_rules)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name or type(self.model).__name__}, vocab_size={self.vocab_size})"


def from_pretrained(directory) -> Tokenizer:
    """``Tokenizer.from_pretrained(directory)``; TokenizerError names the directory when it holds no tokenizer, and
    the file when one is malformed."""
    return Tokenizer.from_pretrained(directory)


def load_tokenizer(directory) -> Tokenizer | None:
    """The tokenizer in ``directory``, or None when it holds no tokenizer files at all."""
    return Tokenizer.from_pretrained(directory) if loading.has_tokenizer_files(Path(directory)) else None


def load_tiktoken(path, *, pattern: str | None = None, special_tokens: dict[str, int] | None = None) -> Tokenizer:
    """A Tokenizer from a ``*.tiktoken`` ranks file (``loading.read_tiktoken`` says what the arguments default to)."""
    return Tokenizer(loading.read_tiktoken(path, pattern=pattern, special_tokens=special_tokens))
