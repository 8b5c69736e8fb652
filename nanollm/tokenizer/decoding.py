"""Turning ids back into bytes and text, all at once or one token at a time (for streaming generation).

Every format decodes the same way: each id stands for some bytes, the bytes are concatenated, and the result is
decoded as UTF-8. Two format-specific rules are data in ``DecodeRules``, not code paths:

* SentencePiece's dummy prefix. Encoding put a "▁" (a space) before the text, so decoding removes the leading space
  of the first piece that shows any text. Control pieces such as <s> show nothing and do not count as "first", so
  [<s>, "▁Hello"] decodes to "Hello". (sentencepiece_processor.cc, ``DecodeSentencePiece`` and ``is_bos_ws``.)
* Invalid UTF-8 (a sequence cut mid-character, or random byte tokens) becomes U+FFFD. tiktoken uses Python's
  ``errors="replace"``, which replaces each maximal invalid subpart with one U+FFFD; sentencepiece replaces each
  invalid byte with its own U+FFFD. ``replace_per_byte`` picks the latter. We get it from Python's codec with
  ``surrogateescape`` (each undecodable byte b becomes the lone surrogate U+DC00+b, which valid UTF-8 never
  produces) and then turn those surrogates into U+FFFD.

Streaming: a token can end in the middle of a character (an emoji is four bytes, often four byte tokens). The
decoder feeds bytes to Python's incremental UTF-8 decoder, which holds back an incomplete tail until the next bytes
complete it, so it prints each character exactly once and the concatenation of everything it returns equals the
whole-sequence decode.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from .errors import TokenizerError

# Lone surrogates U+DC80..U+DCFF that ``surrogateescape`` uses for undecodable bytes 0x80..0xFF -> U+FFFD.
_ESCAPED_BYTE_TO_REPLACEMENT = {0xDC00 + b: 0xFFFD for b in range(0x80, 0x100)}


@dataclass(frozen=True)
class DecodeRules:
    """What each id decodes to.

    ``token_bytes[i]``: the bytes id i contributes in the middle of a text.
    ``first_token_bytes``: overrides for the first id that shows text (SentencePiece: "▁Hello" -> b"Hello").
    ``start_ids``: ids that leave the decoder at the start of the text (SentencePiece control pieces such as <s>).
    ``replace_per_byte``: one U+FFFD per invalid byte (sentencepiece) instead of per invalid subpart (tiktoken).
    """

    token_bytes: dict[int, bytes]
    first_token_bytes: dict[int, bytes] = field(default_factory=dict)
    start_ids: frozenset[int] = frozenset()
    replace_per_byte: bool = False


def decode_bytes(rules: DecodeRules, ids) -> bytes:
    """Concatenate the bytes of ``ids``, applying the first-piece rule."""
    table = rules.token_bytes
    try:
        if not rules.first_token_bytes:
            return b"".join([table[i] for i in ids])
        out = []
        at_start = True
        for i in ids:
            out.append(rules.first_token_bytes.get(i, table[i]) if at_start else table[i])
            if at_start and i not in rules.start_ids:
                at_start = False
        return b"".join(out)
    except KeyError as err:
        raise TokenizerError(f"token id {err.args[0]!r} is not in the vocabulary") from None
    except TypeError:
        raise TokenizerError(f"token ids must be integers, got {ids!r}") from None


def bytes_to_text(rules: DecodeRules, data: bytes) -> str:
    """UTF-8 decode with the format's replacement rule."""
    if rules.replace_per_byte:
        return data.decode("utf-8", errors="surrogateescape").translate(_ESCAPED_BYTE_TO_REPLACEMENT)
    return data.decode("utf-8", errors="replace")


def piece_literal(piece: bytes) -> str:
    """A token's piece as a Python literal, as `encode --pieces` and the lessons print it: its text ('Hello') when
    it is whole UTF-8, else its bytes (b'\\xf0\\x9f', part of a character that the next ids complete)."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


class StreamDecoder:
    """Decode one token at a time; ``push`` returns the text completed by this token (maybe ""), ``flush`` the rest.

    >>> d = gpt2.stream_decoder()
    >>> [d.push(i) for i in gpt2.encode("🤗")] + [d.flush()]    # GPT-2 spends three tokens on its four bytes
    ['', '', '🤗', '']
    """

    def __init__(self, rules: DecodeRules):
        self._rules = rules
        self._utf8 = codecs.getincrementaldecoder("utf-8")(
            errors="surrogateescape" if rules.replace_per_byte else "replace"
        )
        self._at_start = True

    def push(self, token_id: int) -> str:
        rules = self._rules
        if self._at_start:
            data = decode_bytes(rules, [token_id])
            if token_id not in rules.start_ids:
                self._at_start = False
        else:
            data = rules.token_bytes.get(token_id)
            if data is None:
                raise TokenizerError(f"token id {token_id!r} is not in the vocabulary")
        return self._text(self._utf8.decode(data))

    def flush(self) -> str:
        """Text still held back (an incomplete final character becomes U+FFFD); the decoder can then be reused."""
        text = self._text(self._utf8.decode(b"", final=True))
        self._utf8.reset()
        self._at_start = True
        return text

    def _text(self, text: str) -> str:
        if self._rules.replace_per_byte:
            return text.translate(_ESCAPED_BYTE_TO_REPLACEMENT)
        return text
