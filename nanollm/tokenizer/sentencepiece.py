"""SentencePiece BPE models (Llama 1/2, Mistral, ...), read from ``tokenizer.model`` without the sentencepiece package.

What this module adds on top of ``model_proto.py`` (the file's pieces and settings):

1. ``PieceBPE``: BPE over Unicode characters with SentencePiece's conventions. A space is the character "▁"
   (U+2581); characters no piece covers fall back to the 256 byte pieces "<0x00>".."<0xFF>" (their UTF-8 bytes), or
   to <unk> when the model has no byte pieces. ``hf_json.py`` reuses it for Hugging Face's Metaspace tokenizers.
2. ``SentencePieceModel``: sentencepiece's normalizer and the decode rules (see ``decoding.py``).

How sentencepiece encodes "Hello world" with Llama 2's model (add_dummy_prefix=True, remove_extra_whitespaces=False):

    "Hello world" -> " Hello world"        dummy prefix: every word, the first included, now starts with a space
                  -> "▁Hello▁world"        spaces become "▁" so they can sit inside pieces
                  -> ["▁Hello", "▁world"]  BPE on characters: the pair making the highest-scored piece first
                  -> [15043, 3186]

Not supported (TokenizerError at load): Unigram models, custom normalization rules (a non-empty
``precompiled_charsmap``, e.g. nmt_nfkc), ``treat_whitespace_as_suffix``. Unused pieces are treated as normal
pieces rather than re-segmented (sentencepiece re-splits them; Llama has none).

Sources: google/sentencepiece ``bpe_model.cc`` (merging), ``normalizer.cc`` (dummy prefix, whitespace),
``sentencepiece_processor.cc`` (byte fallback, unknown runs, decoding).
"""
from __future__ import annotations

import regex

from .bpe import WordCache, bpe_merge, pair_ranks_from_token_ranks
from .decoding import DecodeRules
from .errors import TokenizerError
from .guards import repair_surrogates
from .model_proto import BPE, BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, ModelProto

SPACE = "\u2581"  # "▁", LOWER ONE EIGHTH BLOCK: SentencePiece's visible stand-in for a space


# ----------------------------------------------------------------------------------------------------------------
# BPE over characters, with byte fallback


def byte_piece(b: int) -> str:
    """The name of the byte-fallback piece for byte ``b``: 0x0A -> "<0x0A>"."""
    return f"<0x{b:02X}>"


class PieceBPE:
    """Encode an already-normalized string ("▁Hello▁world") into ids by character-level BPE.

    ``piece_ids``: the pieces merging may produce or start from (normal and user-defined pieces).
    ``pair_ranks``: pair -> priority (lower merges first).
    ``byte_ids``: ids of "<0x00>".."<0xFF>" when the model has byte fallback, else None.
    ``unk_id``: the id for characters with no piece when there is no byte fallback.
    ``fuse_unk``: a run of unknown characters becomes one <unk> (sentencepiece always does this).
    ``user_defined``: pieces matched whole before merging and never merged further.
    ``whole_word_first``: a word that is itself a piece is that piece, unmerged (tokenizers' ``ignore_merges``).

    Speed: when no piece has "▁" right after another character (true of Llama's vocabulary, whose trainer split at
    whitespace), no merge can cross the start of a "▁..." word, so each word is merged alone and cached
    (``bpe.WordCache``), exactly as byte-level BPE caches regex words. Otherwise the whole string is one merge run.
    """

    def __init__(
        self,
        *,
        piece_ids: dict[str, int],
        pair_ranks: dict[tuple[str, str], float],
        byte_ids: list[int] | None,
        unk_id: int | None,
        user_defined: tuple[str, ...] = (),
        fuse_unk: bool = True,
        whole_word_first: bool = False,
    ):
        self.piece_ids = piece_ids
        self.pair_ranks = pair_ranks
        self.byte_ids = byte_ids
        self.unk_id = unk_id
        self.fuse_unk = fuse_unk
        self.whole_word_first = whole_word_first
        self._user_defined = regex.compile(
            "(" + "|".join(regex.escape(p) for p in sorted(user_defined, key=lambda p: (-len(p), p))) + ")"
        ) if user_defined else None
        splittable = not any(regex.search(f"[^{SPACE}]{SPACE}", p) for p in piece_ids)
        self._word_boundary = regex.compile(f"(?<=[^{SPACE}])(?={SPACE})") if splittable else None
        self._word_ids = WordCache(self._encode_word)

    def encode(self, text: str) -> list[int]:
        if self.whole_word_first and text in self.piece_ids:
            return [self.piece_ids[text]]
        ids: list[int] = []
        if self._user_defined is None:
            self._encode_run(text, ids)
        else:
            for i, chunk in enumerate(self._user_defined.split(text)):
                if i % 2:
                    ids.append(self.piece_ids[chunk])  # odd chunks are the user-defined pieces the regex captured
                elif chunk:
                    self._encode_run(chunk, ids)
        if self.fuse_unk and self.unk_id is not None:
            ids = _fuse_runs(ids, self.unk_id)
        return ids

    def _encode_run(self, text: str, ids: list[int]) -> None:
        if self._word_boundary is None:
            ids.extend(self._encode_word(text))
            return
        word_ids = self._word_ids
        for word in self._word_boundary.split(text):
            ids.extend(word_ids[word])

    def _encode_word(self, word: str) -> tuple[int, ...]:
        out = []
        for symbol in bpe_merge(list(word), self.pair_ranks):
            piece_id = self.piece_ids.get(symbol)
            if piece_id is not None:
                out.append(piece_id)
            elif self.byte_ids is not None:
                out.extend(self.byte_ids[b] for b in symbol.encode("utf-8"))
            elif self.unk_id is not None:
                out.append(self.unk_id)
            else:
                raise TokenizerError(f"{symbol!r} has no piece, and the model has neither byte fallback nor <unk>")
        return tuple(out)


def _fuse_runs(ids: list[int], unk_id: int) -> list[int]:
    """[5, unk, unk, 7, unk] -> [5, unk, 7, unk]: sentencepiece merges each run of unknown characters into one."""
    return [i for k, i in enumerate(ids) if not (i == unk_id and k > 0 and ids[k - 1] == unk_id)]


# ----------------------------------------------------------------------------------------------------------------
# The model


class SentencePieceModel:
    """sentencepiece's encoder and decoder for a BPE ``ModelProto``.

    ``legacy``: whether text after a special token gets the dummy prefix too. sentencepiece knows nothing of special
    tokens in text; transformers' LlamaTokenizer cuts them out and then either encodes each piece between them as a
    text of its own, with its dummy prefix ("<s>[INST]" -> <s> "▁[" ...: ``legacy`` true, as Mistral's
    tokenizer_config.json says, and as Meta's and Mistral's own code encode each turn), or only the start of the whole
    text (<s> "[" ...: legacy false, transformers 5's default when the config does not say).
    """

    def __init__(self, proto: ModelProto, *, legacy: bool = False):
        trainer, normalizer = proto.trainer, proto.normalizer
        if trainer["model_type"] != BPE:
            raise TokenizerError(
                f"only BPE SentencePiece models are supported; this one has model_type={trainer['model_type']} "
                "(1 = Unigram)"
            )
        if normalizer["precompiled_charsmap"]:
            raise TokenizerError(
                f"SentencePiece normalization rules {normalizer['name']!r} (precompiled_charsmap) are not supported; "
                "only the 'identity' normalizer is"
            )
        if trainer["treat_whitespace_as_suffix"]:
            raise TokenizerError("SentencePiece models with treat_whitespace_as_suffix are not supported")
        self.proto = proto
        self.add_dummy_prefix = normalizer["add_dummy_prefix"]
        self.legacy = legacy
        self.remove_extra_whitespaces = normalizer["remove_extra_whitespaces"]
        self.escape_whitespaces = normalizer["escape_whitespaces"]

        pieces = proto.pieces
        mergeable = {p.text: i for i, p in enumerate(pieces) if p.type in (NORMAL, USER_DEFINED, UNUSED)}
        # Higher score merges first, so the rank is -score; only pieces a merge can produce are ranked.
        scores = {p.text: -p.score for p in pieces if p.type in (NORMAL, USER_DEFINED, UNUSED)}
        byte_ids = None
        if trainer["byte_fallback"]:
            by_text = {p.text: i for i, p in enumerate(pieces) if p.type == BYTE}
            try:
                byte_ids = [by_text[byte_piece(b)] for b in range(256)]
            except KeyError as err:
                raise TokenizerError(f"byte_fallback is on but piece {err.args[0]} is missing") from None
        unk_id = trainer["unk_id"] if 0 <= trainer["unk_id"] < len(pieces) else None
        if unk_id is None and byte_ids is None:
            raise TokenizerError(f"unk_id {trainer['unk_id']} names no piece and there is no byte fallback: a "
                                 "character outside the vocabulary could not be encoded")
        self.bpe = PieceBPE(
            piece_ids=mergeable,
            pair_ranks=pair_ranks_from_token_ranks(scores),
            byte_ids=byte_ids,
            unk_id=unk_id,
            user_defined=tuple(p.text for p in pieces if p.type == USER_DEFINED),
        )
        self.bos_id = self._control_id(trainer["bos_id"])
        self.eos_id = self._control_id(trainer["eos_id"])
        self.unk_surface = trainer["unk_surface"]

    def _control_id(self, i: int) -> int | None:
        return i if 0 <= i < len(self.proto.pieces) and self.proto.pieces[i].type == CONTROL else None

    @property
    def control_tokens(self) -> dict[str, int]:
        """Control pieces (<s>, </s>, ...) by text: nanollm's special tokens for this model."""
        return {p.text: i for i, p in enumerate(self.proto.pieces) if p.type == CONTROL}

    def normalize(self, text: str, at_start: bool = True) -> str:
        """sentencepiece's identity normalizer: optional whitespace clean-up, dummy prefix, spaces as "▁"."""
        if self.remove_extra_whitespaces:
            text = " ".join(part for part in text.split(" ") if part)
        if not text:
            return ""
        if self.add_dummy_prefix and (at_start or self.legacy):
            text = " " + text
        if self.escape_whitespaces:
            text = text.replace(" ", SPACE)
        return text

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        """Ids for ``text``; ``at_start`` False (text that follows a special token) skips the dummy prefix, unless
        ``legacy``."""
        return self.bpe.encode(self.normalize(repair_surrogates(text), at_start))

    def decode_rules(self) -> DecodeRules:
        """Pieces show "▁" as a space, byte pieces their byte, control pieces nothing, <unk> its surface " ⁇ "."""
        strip_first = self.add_dummy_prefix or self.remove_extra_whitespaces
        token_bytes, first, keep_start = {}, {}, set()
        for i, piece in enumerate(self.proto.pieces):
            if piece.type == CONTROL:
                token_bytes[i] = b""
                keep_start.add(i)
            elif piece.type == UNKNOWN:
                token_bytes[i] = self.unk_surface.encode("utf-8")
            elif piece.type == BYTE:
                token_bytes[i] = bytes([_byte_value(piece.text)])
            else:
                token_bytes[i] = piece.text.replace(SPACE, " ").encode("utf-8")
                if strip_first and piece.text.startswith(SPACE):
                    first[i] = piece.text[1:].replace(SPACE, " ").encode("utf-8")
                    if self.remove_extra_whitespaces and piece.text == SPACE:
                        keep_start.add(i)  # sentencepiece keeps stripping leading spaces in this mode
        return DecodeRules(token_bytes, first, start_ids=frozenset(keep_start), replace_per_byte=True)


def _byte_value(text: str) -> int:
    """A byte piece's byte: "<0x0A>" -> 10."""
    if not regex.fullmatch(r"<0x[0-9A-F]{2}>", text):
        raise TokenizerError(f"malformed SentencePiece model: byte piece {text!r} is not named <0x00>..<0xFF>")
    return int(text[3:5], 16)
