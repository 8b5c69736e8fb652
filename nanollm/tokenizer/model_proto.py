"""sentencepiece's ``tokenizer.model`` file: the ``ModelProto`` message, read from protobuf's wire format by hand.

What nanollm needs of it: the list of pieces (string, score, type), a TrainerSpec (model type, byte fallback,
special ids) and a NormalizerSpec (dummy prefix, whitespace handling). ``sentencepiece.py`` makes the model of them.

Protobuf in one paragraph (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of
(key, value) records. The key is a varint ``field_number << 3 | wire_type``. Wire type 0 is a varint (7 bits per
byte, least significant group first, high bit set on all bytes but the last), 1 is 8 fixed bytes, 2 is a varint
length followed by that many bytes (strings, bytes and nested messages), 5 is 4 fixed bytes (a float here). A
negative int32 is sent as a 10-byte varint of its 64-bit two's complement. Fields missing from the file take the
defaults declared in sentencepiece_model.proto, which ``_TRAINER_FIELDS`` and ``_NORMALIZER_FIELDS`` repeat.

A malformed file (a truncated record, a varint longer than 10 bytes, a piece that is not UTF-8) is a TokenizerError.

Source: google/sentencepiece ``sentencepiece_model.proto`` (field numbers, defaults).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import TokenizerError

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2

WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH, WIRE_FIXED32 = 0, 1, 2, 5


# ----------------------------------------------------------------------------------------------------------------
# Protobuf wire format


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint starting at ``pos``; return (value, position after it). b"\\x96\\x01" -> 150."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise TokenizerError("truncated protobuf: a varint runs past the end of the data")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise TokenizerError("malformed protobuf: varint longer than 10 bytes")


def read_fields(data: bytes):
    """Yield (field number, wire type, value) for each record of one message. Length-delimited values are bytes."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == WIRE_VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == WIRE_LENGTH:
            length, pos = read_varint(data, pos)
            value = data[pos : pos + length]
            pos += length
        elif wire_type == WIRE_FIXED32:
            value = data[pos : pos + 4]
            pos += 4
        elif wire_type == WIRE_FIXED64:
            value = data[pos : pos + 8]
            pos += 8
        else:
            raise TokenizerError(f"unsupported protobuf wire type {wire_type} for field {number}")
        if pos > len(data):
            raise TokenizerError(f"truncated protobuf: field {number} runs past the end of the data")
        yield number, wire_type, value


def _int32(value: int) -> int:
    """A varint read as int32: negative numbers arrive as 64-bit two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


# ----------------------------------------------------------------------------------------------------------------
# ModelProto


@dataclass
class Piece:
    text: str
    score: float = 0.0
    type: int = NORMAL


# field number -> (name, kind, default); only the fields nanollm uses.
_TRAINER_FIELDS = {
    3: ("model_type", "int", UNIGRAM),
    24: ("treat_whitespace_as_suffix", "bool", False),
    35: ("byte_fallback", "bool", False),
    40: ("unk_id", "int", 0),
    41: ("bos_id", "int", 1),
    42: ("eos_id", "int", 2),
    43: ("pad_id", "int", -1),
    44: ("unk_surface", "str", " \u2047 "),
}
_NORMALIZER_FIELDS = {
    1: ("name", "str", ""),
    2: ("precompiled_charsmap", "bytes", b""),
    3: ("add_dummy_prefix", "bool", True),
    4: ("remove_extra_whitespaces", "bool", True),
    5: ("escape_whitespaces", "bool", True),
}


@dataclass
class ModelProto:
    """The parts of sentencepiece's ModelProto that encoding and decoding need."""

    pieces: list[Piece]
    trainer: dict = field(default_factory=dict)
    normalizer: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> "ModelProto":
        pieces: list[Piece] = []
        trainer = {name: default for name, _, default in _TRAINER_FIELDS.values()}
        normalizer = {name: default for name, _, default in _NORMALIZER_FIELDS.values()}
        for number, wire_type, value in read_fields(data):
            if number == 1 and wire_type == WIRE_LENGTH:
                pieces.append(_parse_piece(value))
            elif number == 2 and wire_type == WIRE_LENGTH:
                _parse_scalars(value, _TRAINER_FIELDS, trainer)
            elif number == 3 and wire_type == WIRE_LENGTH:
                _parse_scalars(value, _NORMALIZER_FIELDS, normalizer)
        if not pieces:
            raise TokenizerError("not a SentencePiece model: no pieces found")
        return cls(pieces=pieces, trainer=trainer, normalizer=normalizer)


def _parse_piece(data: bytes) -> Piece:
    piece = Piece(text="")
    for number, wire_type, value in read_fields(data):
        if number == 1 and wire_type == WIRE_LENGTH:
            piece.text = _utf8(value, "a piece")
        elif number == 2 and wire_type == WIRE_FIXED32:
            piece.score = struct.unpack("<f", value)[0]
        elif number == 3 and wire_type == WIRE_VARINT:
            piece.type = value
    return piece


def _parse_scalars(data: bytes, fields: dict, out: dict) -> None:
    for number, wire_type, value in read_fields(data):
        if number not in fields:
            continue
        name, kind, _ = fields[number]
        if kind == "int" and wire_type == WIRE_VARINT:
            out[name] = _int32(value)
        elif kind == "bool" and wire_type == WIRE_VARINT:
            out[name] = bool(value)
        elif kind == "str" and wire_type == WIRE_LENGTH:
            out[name] = _utf8(value, name)
        elif kind == "bytes" and wire_type == WIRE_LENGTH:
            out[name] = bytes(value)


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"malformed SentencePiece model: {what} is not UTF-8 ({err})") from None

