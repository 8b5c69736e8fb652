"""Response bodies of the OpenAI API, built from the tokens the scheduler sends (scheduler.Token).

One accumulator, `Choices`, serves both ways of answering: a whole response (`body`) after the last token, or one
stream chunk per token (`chunk`) as it comes; a token's text piece, finish reason and logprobs are formatted once.

    /v1/completions        {"object": "text_completion", "choices": [{"index", "text", "logprobs", "finish_reason"}]}
                           logprobs: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}
    /v1/chat/completions   {"object": "chat.completion", "choices": [{"index", "message", "logprobs", ...}]}
                           logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{...}]}]}
    streamed               the same fields per token, as "text_completion" / "chat.completion.chunk" chunks

finish_reason is OpenAI's: "stop" for an end-of-sequence token or a stop string, "length" for max_tokens.
"""
from .api import LOGPROB_FLOOR, Request

OBJECT = {"completions": "text_completion", "chat": "chat.completion"}
CHUNK_OBJECT = {"completions": "text_completion", "chat": "chat.completion.chunk"}


def usage(request: Request, completion_tokens: int) -> dict:
    """OpenAI's usage: each distinct prompt counted once (not n times), every generated token of every choice."""
    prompt = sum(len(p) for p in request.prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


class Choices:
    """Every row's text, finish reason and logprobs so far, and the response shapes built from them."""

    def __init__(self, request: Request, tokenizer):
        self.request, self.tokenizer = request, tokenizer
        rows = len(request.rows)
        self.texts = [[] for _ in range(rows)]  # the text pieces shown so far, per row
        self.offsets = [0] * rows  # characters of text shown so far, per row (completions' text_offset)
        self.finish = [None] * rows
        self.logprobs = [[] for _ in range(rows)]  # per row, one entry per token in the endpoint's shape
        self.completion_tokens = 0

    def add(self, token) -> dict | None:
        """Take one scheduler.Token; -> this token's logprobs entry (None when not asked for)."""
        self.completion_tokens += 1
        row = token.row
        entry = None if token.logprobs is None else self.logprob_entry(token, self.offsets[row])
        if entry is not None:
            self.logprobs[row].append(entry)
        self.texts[row].append(token.piece)
        self.offsets[row] += len(token.piece)
        self.finish[row] = token.finish_reason
        return entry

    # -- logprobs ------------------------------------------------------------------------------------------------

    def describe(self, token_id: int, logprob: float) -> dict:
        """One token as chat's logprobs list it: its text alone, its bytes (its text may be part of a character)."""
        return {"token": self.tokenizer.decode([token_id]), "logprob": max(logprob, LOGPROB_FLOOR),
                "bytes": list(self.tokenizer.token_to_bytes(token_id))}

    def logprob_entry(self, token, offset: int) -> dict:
        """chat: {"token", "logprob", "bytes", "top_logprobs": [...]}; completions: one position of each list."""
        logprob, top = token.logprobs
        if self.request.kind == "chat":
            return {**self.describe(token.token, logprob), "top_logprobs": [self.describe(i, lp) for i, lp in top]}
        return {"token": self.tokenizer.decode([token.token]), "logprob": max(logprob, LOGPROB_FLOOR),
                "top": {self.tokenizer.decode([i]): max(lp, LOGPROB_FLOOR) for i, lp in top}, "offset": offset}

    def logprobs_object(self, entries: list) -> dict | None:
        """A row's (or one token's) entries as the endpoint's logprobs object; None when logprobs were not asked."""
        if self.request.top_logprobs is None:
            return None
        if self.request.kind == "chat":
            return {"content": entries}
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [e["top"] for e in entries], "text_offset": [e["offset"] for e in entries]}

    # -- whole responses and chunks ------------------------------------------------------------------------------

    def head(self, chunk: bool) -> dict:
        r = self.request
        return {"id": r.id, "object": (CHUNK_OBJECT if chunk else OBJECT)[r.kind], "created": r.created,
                "model": r.model}

    def body(self) -> dict:
        """The whole response, once every row has finished."""
        choices = []
        for row, pieces in enumerate(self.texts):
            text = "".join(pieces)
            content = {"message": {"role": "assistant", "content": text}} if self.request.kind == "chat" else \
                {"text": text}
            choices.append({"index": row, **content, "logprobs": self.logprobs_object(self.logprobs[row]),
                            "finish_reason": self.finish[row]})
        return {**self.head(False), "choices": choices, "usage": usage(self.request, self.completion_tokens)}

    def first_chunk(self) -> dict | None:
        """Chat streams open each choice with its role (OpenAI's first delta); completions have no such chunk."""
        if self.request.kind != "chat":
            return None
        return {**self.head(True), "choices": [{"index": row, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}
                                               for row in range(len(self.texts))]}

    def chunk(self, token, entry: dict | None) -> dict | None:
        """The stream chunk of one token just added; None when it shows nothing (no text, logprobs or finish)."""
        if not token.piece and entry is None and token.finish_reason is None:
            return None
        content = {"delta": {"content": token.piece} if token.piece else {}} if self.request.kind == "chat" else \
            {"text": token.piece}
        logprobs = None if entry is None else self.logprobs_object([entry])
        return {**self.head(True), "choices": [{"index": token.row, **content, "logprobs": logprobs,
                                                "finish_reason": token.finish_reason}]}

    def usage_chunk(self) -> dict:
        """stream_options.include_usage: the last chunk, with no choices and the usage (OpenAI's shape)."""
        return {**self.head(True), "choices": [], "usage": usage(self.request, self.completion_tokens)}
