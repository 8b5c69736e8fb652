"""Command line: train a tokenizer, encode text to ids, decode ids to text.

    python -m nanollm.tokenizer train --input corpus.txt --vocab-size 1024 --output my_tok [--special "<|endoftext|>"]
    python -m nanollm.tokenizer train ... --verbose                            # each merge as it is learned
    python -m nanollm.tokenizer encode --tokenizer my_tok "Hello world"       # prints: 72 101 108 ...
    python -m nanollm.tokenizer encode --tokenizer gpt2_dir --pieces "Hello"   # prints: 15496 'Hello'
    python -m nanollm.tokenizer decode --tokenizer my_tok 72 101 108           # prints: Hel

``--tokenizer`` takes any directory ``Tokenizer.from_pretrained`` reads. Without text or ids on the command line,
encode and decode read standard input.

Everything that reads or decodes input happens inside one error handler: a missing file, a FIFO, bytes that are not
UTF-8 (in a file, on standard input or on the command line), a bad or runaway pattern, a malformed tokenizer
directory all end in one line on standard error and exit status 1, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import files
from .byte_level import NAMED_PATTERNS
from .decoding import piece_literal
from .errors import TokenizerError
from .tokenizer import from_pretrained
from .train import Merge, train_bpe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanollm.tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="learn a byte-level BPE from a text file")
    train.add_argument("--input", required=True, type=Path, help="UTF-8 text file to learn from")
    train.add_argument("--vocab-size", required=True, type=int, help="256 bytes + merges + special tokens")
    train.add_argument("--output", required=True, type=Path, help="directory to write nanollm_tokenizer.json into")
    names = ", ".join(NAMED_PATTERNS)
    train.add_argument("--pattern", default="cl100k", help=f"pre-tokenizer: one of {names}, or a regex")
    train.add_argument("--special", action="append", default=[], help="a special token (repeatable)")
    train.add_argument("--bos", help="which special token is BOS (prepended to prompts)")
    train.add_argument("--eos", help="which special token is EOS")
    train.add_argument("--verbose", action="store_true", help="print each merge as it is learned")

    encode = commands.add_parser("encode", help="print the ids of some text")
    encode.add_argument("--tokenizer", required=True, type=Path, help="tokenizer directory")
    encode.add_argument("--allow-special", action="store_true", help="turn special-token text into special ids")
    encode.add_argument("--pieces", action="store_true", help="one id a line, with the text it stands for")
    encode.add_argument("text", nargs="?", help="text to encode (default: standard input)")

    decode = commands.add_parser("decode", help="print the text of some ids")
    decode.add_argument("--tokenizer", required=True, type=Path, help="tokenizer directory")
    decode.add_argument("ids", nargs="*", help="token ids (default: whitespace-separated ids on standard input)")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            trained = train_bpe(
                _read_utf8(args.input),
                args.vocab_size,
                pattern=args.pattern,
                special_tokens=tuple(args.special),
                bos_token=args.bos,
                eos_token=args.eos,
                on_merge=_print_merge if args.verbose else None,
            )
            path = trained.save(args.output, inputs=[args.input])
            print(f"wrote {path} ({len(trained.merges)} merges, {len(trained.special_tokens)} special tokens)")
        elif args.command == "encode":
            tok = from_pretrained(args.tokenizer)
            text = _argument_text(args.text) if args.text is not None else _read_utf8(None)
            ids = tok.encode(text, allowed_special="all" if args.allow_special else ())
            if args.pieces:
                print("\n".join(f"{i} {piece_literal(piece)}" for i, piece in zip(ids, tok.pieces(ids))))
            else:
                print(" ".join(map(str, ids)))
        else:
            tok = from_pretrained(args.tokenizer)
            fields = args.ids if args.ids else _read_utf8(None).split()
            try:
                ids = [int(f) for f in fields]
            except ValueError as err:
                raise TokenizerError(f"ids must be integers: {err}") from None
            sys.stdout.write(tok.decode(ids) + "\n")
    except (TokenizerError, OSError, UnicodeError) as err:  # UnicodeError: a terminal that cannot show the text
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _print_merge(merge: Merge) -> None:
    """train --verbose: one line per merge, in the order learned, e.g. `merge 97 + 97 -> 256 'aa' (count 4)`."""
    print(f"merge {merge.left} + {merge.right} -> {merge.new_id} {piece_literal(merge.token)} "
          f"(count {merge.count})", flush=True)


def _read_utf8(path: Path | None) -> str:
    """The text of a file, or of standard input when ``path`` is None; bytes that are not UTF-8 are an error."""
    data = sys.stdin.buffer.read() if path is None else files.read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        source = "standard input" if path is None else str(path)
        raise TokenizerError(f"{source} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def _argument_text(text: str) -> str:
    """Text from the command line. Python hands over bytes that are not UTF-8 as lone surrogates (surrogateescape);
    they are refused as standard input's are, not encoded as U+FFFD."""
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"the text argument is not UTF-8 text (byte {err.start}: {err.reason})") from None


if __name__ == "__main__":
    sys.exit(main())
