"""SentencePiece (Llama 2's tokenizer.model) read without the sentencepiece package, checked against that package."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.tokenizer import Tokenizer, TokenizerError
from nanollm.tokenizer.model_proto import ModelProto, read_fields, read_varint
from tests.test_tokenizer_byte_level import EDGE_CASES, shared_directory, surrogate_text, tricky_text

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return shared_directory(tmp_path_factory, "llama2", {"tokenizer.model": "tokenizers/llama2/tokenizer.model"})


@pytest.fixture(scope="module")
def llama(llama_dir):
    return Tokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="module")
def sp(llama_dir):
    return spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))


# -- the protobuf reader -----------------------------------------------------------------------------------------


def test_varint_worked_examples():
    """From protobuf's encoding guide: 150 is 0x96 0x01 (0x16 + 0x01 << 7); 1 is 0x01; -1 as int32 is ten bytes."""
    assert read_varint(b"\x96\x01", 0) == (150, 2)
    assert read_varint(b"\x01", 0) == (1, 1)
    value, end = read_varint(b"\xff" * 9 + b"\x01", 0)
    assert end == 10 and value - (1 << 64) == -1


def test_read_fields_on_a_hand_built_message():
    """Field 1 string "▁a" (key 0x0A), field 2 float 0.5 (key 0x15), field 3 varint 6 (key 0x18)."""
    piece = "▁a".encode()
    data = b"\x0a" + bytes([len(piece)]) + piece + b"\x15" + struct.pack("<f", 0.5) + b"\x18\x06"
    assert list(read_fields(data)) == [(1, 2, piece), (2, 5, struct.pack("<f", 0.5)), (3, 0, 6)]
    with pytest.raises(TokenizerError, match="truncated"):
        list(read_fields(data[:-1]))


def test_model_proto_matches_sentencepiece(llama, sp):
    proto = llama.model.proto
    assert len(proto.pieces) == sp.get_piece_size() == llama.vocab_size
    for i in (0, 1, 2, 3, 258, 259, 1000, 15043, 31999):
        assert proto.pieces[i].text == sp.id_to_piece(i)
        assert proto.pieces[i].score == sp.get_score(i)
    assert (llama.bos_token_id, llama.eos_token_id) == (sp.bos_id(), sp.eos_id()) == (1, 2)
    assert proto.trainer["byte_fallback"] and proto.normalizer["add_dummy_prefix"]


def test_not_a_model_is_refused(tmp_path):
    with pytest.raises(TokenizerError):
        ModelProto.parse(b"\x0a\x05abc")


# -- encoding ----------------------------------------------------------------------------------------------------


def test_hand_checked_ids(llama):
    """"Hello world" -> "▁Hello▁world" -> pieces 15043 and 3186; a prompt adds BOS (1) first."""
    assert llama.encode("Hello world") == [15043, 3186]
    assert llama.encode_prompt("Hello world") == [1, 15043, 3186]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_sentencepiece(llama, sp, text):
    assert llama.encode(text) == sp.encode(text)
    assert llama.encode_prompt(text) == sp.encode(text, add_bos=True)
    assert llama.decode(llama.encode(text)) == sp.decode(sp.encode(text))


@settings(max_examples=150)
@given(st.one_of(st.text(max_size=60), tricky_text))
def test_random_text_matches_sentencepiece(llama, sp, text):
    ids = llama.encode(text)
    assert ids == sp.encode(text)
    assert llama.encode_prompt(text) == sp.encode(text, add_bos=True)
    if sp.decode(sp.encode(text)) == text:
        assert llama.decode(ids) == text


@settings(max_examples=60)
@given(surrogate_text)
def test_surrogates_encode_as_their_repaired_text(llama, sp, text):
    """The sentencepiece package cannot take a str with surrogates at all; nanollm applies tiktoken's rule (a pair
    joined, a lone one U+FFFD: guards.repair_surrogates) in every format, so the ids are those of the repaired text."""
    repaired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert llama.encode(text) == sp.encode(repaired)
    assert llama.encode_prompt(text) == sp.encode(repaired, add_bos=True)


def test_byte_fallback_for_characters_without_a_piece(llama, sp):
    """U+2029 has no piece: it becomes its three UTF-8 bytes E2 80 A9 as <0xE2> <0x80> <0xA9> (ids 3 + byte)."""
    ids = llama.encode("\u2029")
    assert ids == sp.encode("\u2029")
    assert ids[-3:] == [3 + 0xE2, 3 + 0x80, 3 + 0xA9]


# -- decoding ----------------------------------------------------------------------------------------------------


def test_decode_drops_the_dummy_prefix_after_bos(llama, sp):
    for ids in ([1, 15043], [15043], [1, 1, 15043, 3186], [29871, 15043], [243, 15043], [2, 15043, 2]):
        assert llama.decode(ids) == sp.decode(ids)
    assert llama.decode([1, 15043]) == "Hello"


@settings(max_examples=200)
@given(st.lists(st.integers(0, 31999), max_size=25))
def test_decode_of_any_ids_matches_sentencepiece(llama, sp, ids):
    """Including cut-off byte sequences: sentencepiece writes one U+FFFD per invalid byte, and so do we."""
    assert llama.decode(ids) == sp.decode(ids)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 31999), max_size=25))
def test_stream_equals_whole_decode(llama, ids):
    decoder = llama.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == llama.decode(ids)


def test_stream_emoji_over_byte_pieces(llama):
    """🤗 has no piece: four byte pieces, and the stream shows the emoji once, on the fourth."""
    ids = llama.encode("🤗")
    decoder = llama.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "", "", "", "🤗"]  # "▁" first: its space is the dummy prefix
    assert decoder.flush() == ""
