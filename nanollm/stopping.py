"""Stop conditions, and the text stream that makes sure a stop string never reaches the user.

A sequence stops at the first of:
    "length"  max_new_tokens tokens generated;
    "eos"     an end-of-sequence id (generation_config.json, else config.json; chat adds the turn's end token), which
              is suppressed until min_new_tokens tokens exist (logits_processors step 4);
    "stop"    the decoded text contains one of the stop strings.

Stop strings are matched on text, not tokens, because one string can be spelled by many token sequences and can
start in the middle of a token. While the text generated so far ends with the beginning of a stop string, that tail
is held back: the user sees it only once it can no longer become a stop string. So the streamed text is exactly the
final text, and neither contains the stop string. (transformers' StopStringCriteria stops the same way but leaves the
string in its output.)
"""


def held_back_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of text that is a proper beginning of some stop string.

    Example: text="Hello Us", stops=("User:",) -> 2 ("Us" may become "User:"); text="Hello", stops=("User:",) -> 0.
    """
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """Turn one sequence's tokens into text pieces, UTF-8 safe, cutting at the first stop string.

    `push(token)` returns the text that is now safe to show (maybe ""), `finish()` what is still held back once the
    sequence has ended. `stopped` becomes True when a stop string appears; the text before it is all that is shown.
    Example (GPT-2, stops=("\\n\\n",)): tokens for "Hi.\\n\\nBye" stream "Hi." then stop; "\\n\\nBye" is never shown.
    """

    def __init__(self, decoder, stops=()):
        self.decoder = decoder  # the tokenizer's stream_decoder(): push(id) -> completed text, flush() -> the rest
        self.stops = tuple(s for s in stops if s)
        self.pending = ""  # text decoded but not yet shown, because it may be the start of a stop string
        self.stopped = False

    def push(self, token: int) -> str:
        return self._release(self.pending + self.decoder.push(token), final=False)

    def finish(self) -> str:
        """The held-back text once no more tokens will come (an incomplete last character becomes U+FFFD)."""
        if self.stopped:
            return ""
        return self._release(self.pending + self.decoder.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        if not self.stops:
            self.pending = ""
            return text
        # The earliest stop string wins: everything before it is shown, it and everything after are dropped.
        hits = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        keep = 0 if final else held_back_length(text, self.stops)
        self.pending = text[len(text) - keep :]
        return text[: len(text) - keep]
