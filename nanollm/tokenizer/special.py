"""Special tokens (<|endoftext|>, <s>, <|im_start|>, ...) and the policy for finding them in user text.

The danger: a special token is a control signal to the model, so if user text containing the characters
"<|endoftext|>" were turned into the end-of-text id, a user could end a document or fake a chat turn (prompt
injection). So, as in tiktoken, text is split on special tokens only when the caller says so:

    allowed_special     which special tokens to turn into their ids: "all" or a collection of strings
    disallowed_special  which special tokens to refuse (raise TokenizerError): "all" (tiktoken's spelling; "raise"
                        means the same) for every special token not allowed, or a collection

Unlike tiktoken, whose default is to raise, nanollm's default (both empty) encodes special-token text as the
ordinary characters it is made of, which is always safe. ``Tokenizer.encode_prompt`` allows them all, because a
prompt rendered from a chat template is trusted text that must contain them.

Added tokens that are not special are another thing: Gemma 3 adds "\n\n", runs of spaces and "<b>" to its
vocabulary, Qwen3 adds "<think>", all marked ``"special": false``. They are no control signal, just tokens that
ordinary text is cut into, and tokenizers matches them in every text, even with ``encode_special_tokens`` (its
switch for special-token text as text). ``AddedVocabulary`` does the same in front of the model, so they are no
part of the policy above: a user's "<b>" is Gemma's <b> token, as in transformers. (Where a special and a
non-special added token overlap in a text, the special one is cut out first; tokenizers takes the leftmost-longest
of all added tokens in one pass. The files nanollm reads have no such pair.)
"""
from __future__ import annotations

from collections.abc import Collection

import regex

from .errors import TokenizerError


def resolve_policy(
    special_tokens: dict[str, int],
    allowed_special: str | Collection[str],
    disallowed_special: str | Collection[str],
) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed, disallowed) as sets of token strings, checked against ``special_tokens``."""
    if allowed_special == "all":
        allowed = frozenset(special_tokens)
    elif isinstance(allowed_special, str):
        raise TokenizerError(f"allowed_special must be 'all' or a collection of strings, not {allowed_special!r}")
    else:
        allowed = frozenset(allowed_special)
        unknown = allowed - special_tokens.keys()
        if unknown:
            raise TokenizerError(f"allowed_special names tokens that are not special tokens: {sorted(unknown)}")
    if disallowed_special in ("all", "raise"):
        disallowed = frozenset(special_tokens) - allowed
    elif isinstance(disallowed_special, str):
        raise TokenizerError(f"disallowed_special must be 'all', 'raise' or a collection, not {disallowed_special!r}")
    else:
        disallowed = frozenset(disallowed_special) - allowed
    return allowed, disallowed


def added_token_ids(texts, vocab: dict[str, int]) -> dict[str, int]:
    """content -> id for added tokens, in order, by tokenizers' rule (``AddedVocabulary.add_tokens``): a token already
    in the vocabulary keeps its id; any other takes one past the largest added id, or the vocabulary's size (its
    number of entries) if that is larger. An empty token is skipped, as tokenizers skips it: the regex that cuts added
    tokens out of text would otherwise match the empty string between every two characters. A repeated token keeps
    its first id.

    Example: vocab {"a": 0, "b": 1}, texts ["<s>", "b", "", "</s>", "<s>"] -> {"<s>": 2, "b": 1, "</s>": 3}.
    """
    added: dict[str, int] = {}
    for text in texts:
        if not text or text in added:
            continue
        if text in vocab:
            added[text] = vocab[text]
        else:
            largest = max(added.values(), default=-1)
            added[text] = largest + 1 if largest >= len(vocab) else len(vocab)
    return added


class AddedVocabulary:
    """A model behind its non-special added tokens (module docstring): ``encode_ordinary`` cuts them out of the text
    and encodes the rest with ``model``. Example with {"\n\n": 108}: "a\n\nb" -> model("a"), 108, model("b").
    ``strips``: the tokens that take the white space beside them (see ``split_on_special``)."""

    def __init__(self, model, tokens: dict[str, int], strips: dict[str, tuple[bool, bool]] | None = None):
        self.model = model
        self.tokens = tokens
        self.strips = strips or {}
        self._pattern = special_regex(tokens)

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        ids: list[int] = []
        for start, piece, is_added in split_on_special(text, self._pattern, self.strips):
            if is_added:
                ids.append(self.tokens[piece])
            elif piece:
                ids.extend(self.model.encode_ordinary(piece, at_start and start == 0))
        return ids


def special_regex(tokens: Collection[str]) -> regex.Pattern | None:
    """A regex matching any of ``tokens``, longest first so "<|im_start|>" wins over a prefix of it."""
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))))


def refuse_disallowed(text: str, pattern: regex.Pattern | None) -> None:
    """Raise TokenizerError if ``text`` contains a disallowed special token."""
    if pattern is None:
        return
    found = pattern.search(text)
    if found:
        raise TokenizerError(
            f"text contains the special token {found.group()!r} at offset {found.start()}; pass "
            f"allowed_special={{{found.group()!r}}} to encode it as a special token, or disallowed_special=() "
            "to encode it as ordinary text"
        )


# Rust's char::is_whitespace, which tokenizers' lstrip/rstrip use: Unicode's White_Space property (Python's
# str.isspace also counts the separators U+001C..U+001F).
_WHITE_SPACE = regex.compile(r"\p{White_Space}")


def split_on_special(text: str, pattern: regex.Pattern | None, strips: dict[str, tuple[bool, bool]] | None = None):
    """Yield (start offset, piece, is_special) in order; ordinary pieces may be empty only if the text is empty.

    Example: "a<s>b" with pattern matching "<s>" -> (0, "a", False), (1, "<s>", True), (4, "b", False).

    ``strips`` maps a token to its (lstrip, rstrip) flags (tokenizers' AddedToken; Phi-3's <|end|> and
    <|assistant|> have rstrip): the token also takes the white space on that side, which then belongs to no piece.
    Example: "a <|end|>\n b" with <|end|>: (True, True) -> (0, "a", False), (1, "<|end|>", True), (11, "b", False).
    """
    if pattern is None:
        yield 0, text, False
        return
    strips = strips or {}
    position = 0
    while (found := pattern.search(text, position)) is not None:
        start, end = found.span()
        lstrip, rstrip = strips.get(found.group(), (False, False))
        while lstrip and start > position and _WHITE_SPACE.match(text, start - 1):
            start -= 1
        while rstrip and end < len(text) and _WHITE_SPACE.match(text, end):
            end += 1
        if start > position:
            yield position, text[position:start], False
        yield start, found.group(), True
        position = end
    if position < len(text) or position == 0:
        yield position, text[position:], False
