"""Lesson 10: what changes the logits before the choice (penalties), and what ends a sequence (EOS, stops, length)."""
import numpy as np

from ..logits_processors import TokenHistory, apply_presence_frequency, apply_repetition_penalty, process_logits
from ..request import SamplingParams
from .lesson import demo_model, heading, numbers, piece, say

LOGITS = np.array([[4.0, -4.0, 2.0, 1.0]], dtype=np.float32)  # (B, V) = (1, 4)
SEEN = np.array([[True, True, False, False]])  # (B, V) tokens 0 and 1 are in the text already
COUNTS = np.array([[3, 1, 0, 0]], dtype=np.int32)  # (B, V) times each was generated
PROMPT = "The for statement"
LOOPING = 45  # new tokens of lesson 6's greedy run (penalty off)


def top(tokenizer, row: np.ndarray, k: int = 3) -> str:
    order = np.argsort(-row, kind="stable")[:k]
    return ", ".join(f"{piece(tokenizer, i)} {row[i]:.2f}" for i in order)


def run() -> None:
    heading("1. Repetition penalty (CTRL, 2019; transformers' RepetitionPenaltyLogitsProcessor), penalty 2")
    say(f"  logits {numbers(LOGITS[0], 1)}, tokens 0 and 1 already seen")
    say(f"  apply_repetition_penalty -> {numbers(apply_repetition_penalty(LOGITS, SEEN, 2.0)[0], 1)}: "
        f"a positive logit is divided, a negative one multiplied")
    say("  (dividing -4 by 2 would give -2: the seen token would become more likely, not less)")
    heading("2. Presence and frequency penalties (OpenAI), over the generated tokens only")
    say(f"  counts {COUNTS[0].tolist()}, presence 0.5, frequency 0.25 -> "
        f"{numbers(apply_presence_frequency(LOGITS, COUNTS, 0.5, 0.25)[0], 2)}  (logit - 0.5 - 0.25 x count)")

    model = demo_model()
    tok = model.tokenizer
    heading("3. In the model: lesson 6's greedy run with the penalty off, and where 1.3 would have chosen otherwise")
    ids = tok.encode(PROMPT)
    looping = ids + model.generate(ids, max_new_tokens=LOOPING, temperature=0, repetition_penalty=1.0).token_ids
    all_logits = model.forward([looping])[0]  # (T, V): row t scores the token after looping[: t + 1]
    params = SamplingParams(temperature=0, repetition_penalty=1.3)
    for t in range(len(ids) - 1, len(looping) - 1):
        history = TokenHistory([looping[: t + 1]], model.config.vocab_size)
        processed = process_logits(all_logits[t][None], params, history)[0]  # (V,)
        if np.argmax(processed) != np.argmax(all_logits[t]):
            break
    say(f"  after {tok.decode(looping[: t + 1])[-40:]!r}, new token {t + 2 - len(ids)}:")
    say(f"  raw logits, top 3:        {top(tok, all_logits[t])}")
    say(f"  after penalty 1.3, top 3: {top(tok, processed)}")
    say("  process_logits lowers every token the text already holds; a token not yet used can then win.")

    heading("4. What ends a sequence (finish_reason)")
    for options in (dict(), dict(stop=(" clause",)), dict(eos_token_ids=tok.encode("."))):
        out = model.generate(PROMPT, max_new_tokens=30, temperature=0, **options)
        print(f"  {options or 'max_new_tokens=30'!s:28s} -> {out.finish_reason:6s} after {len(out.token_ids):2d} "
              f"tokens, last {piece(tok, out.token_ids[-1])}: {out.text!r}")
    say("A stop string is matched on the text and never shown; the EOS token is kept in token_ids but not in the "
        "text. min_new_tokens bans EOS (logit -inf) until that many tokens exist.")
