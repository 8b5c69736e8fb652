"""Lesson 1: text becomes token ids, with the demo model's byte-level BPE and, when its files are here, GPT-2's."""
from ..loader import DEMO_MODEL
from ..tokenizer import Tokenizer
from ..tokenizer.bpe import bpe_merge
from ..tokenizer.decoding import piece_literal
from .lesson import gpt2_tokenizer, heading, piece, say

TEXT = "Hello, I'm an AI assistant."
WORD = " assistant"


def merge_steps(tokenizer: Tokenizer, word: str) -> list[tuple[int, list[bytes]]]:
    """The word as bpe_merge leaves it when the vocabulary holds only its first merges: (rank, symbols) each time
    adding the merge of that rank changes the result. The last entry is the word's encoding with every merge.
    """
    ranks = tokenizer.model.pair_ranks  # (left bytes, right bytes) -> rank, lower merges first
    symbols = [bytes([b]) for b in word.encode("utf-8")]
    steps, known = [], {}
    for pair, rank in sorted(ranks.items(), key=lambda item: item[1]):
        known[pair] = rank
        if pair[0] + pair[1] in word.encode("utf-8"):
            merged = bpe_merge(symbols, known)
            if len(merged) < len(steps[-1][1] if steps else symbols):
                steps.append((rank, merged))
    return steps


def run() -> None:
    tok = Tokenizer.from_pretrained(DEMO_MODEL)
    say(f"The demo model's tokenizer: byte-level BPE with {tok.vocab_size} ids (256 bytes, "
        f"{len(tok.model.pair_ranks)} merges, <|endoftext|>), learned from Python's documentation.")
    heading("1. The pre-tokenizer cuts the text into words (a regex); merges never cross a word's edge")
    words = list(tok.model.pre_tokenizer.words(TEXT, True))
    say(f"{TEXT!r} -> {words}")

    heading("2. BPE: a word starts as its UTF-8 bytes; the lowest-ranked pair present is joined, again and again")
    say(f"{WORD!r} with the vocabulary's merges up to each rank:")
    symbols = [bytes([b]) for b in WORD.encode("utf-8")]
    say(f"  bytes        {[s.decode() for s in symbols]}")
    for rank, merged in merge_steps(tok, WORD):
        say(f"  merge {rank:4d}   {[s.decode() for s in merged]}")

    heading("3. Each final symbol is one id of the vocabulary (as python -m nanollm.tokenizer encode --pieces)")
    ids = tok.encode(TEXT)
    for i, data in zip(ids, tok.pieces(ids)):
        print(f"{i} {piece_literal(data)}")
    say(f"{len(ids)} tokens for {len(TEXT)} characters; decode(ids) == text: {tok.decode(ids) == TEXT}")

    heading("4. GPT-2's tokenizer: the same algorithm, 50,257 ids learned from web text")
    gpt2, where = gpt2_tokenizer()
    if gpt2 is None:
        say(where)
    else:
        gpt2_ids = gpt2.encode(TEXT)
        say(f"from {where}:")
        say(f"GPT-2 ids: {' '.join(map(str, gpt2_ids))}")
        say(f"pieces:    {' '.join(piece(gpt2, i) for i in gpt2_ids)}")
        say(f"{len(gpt2_ids)} tokens where the demo needs {len(ids)}: a larger vocabulary holds longer pieces, "
            f"so the same text costs fewer forward passes.")
    print()
    say("Try: python -m nanollm.tokenizer encode --pieces --tokenizer DIR \"text\"   and   "
        "python -m nanollm.tokenizer train --verbose ...")
