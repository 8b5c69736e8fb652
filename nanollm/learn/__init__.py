"""Lessons: watch every stage of inference happen, in the order it happens, on real nanollm code.

    python -m nanollm.learn --list      the lessons
    python -m nanollm.learn 5           run lesson 5

Each lesson runs offline on what ships with nanollm: the demo model (nanollm/demo_model/), its tokenizer, and small
arrays made by hand. It calls the engine's own functions (sampling.py's filters and draw, nanollm.load,
model.generate, model.step, the chat templates), prints what happens in a few dozen lines, and ends by naming the
file and function to read next. Where tutorials print a result (the 9-word vocabulary of lessons 7-9, the softmax
of [0.1, 0.2, 0.3, 0.8], GPT-2's ids for a sentence) the lesson computes it instead of quoting it.

The lessons, one module per stage (lesson.py holds what they share):
    tokens.py      1  text -> ids
    positions.py   2  ids -> vectors, and positions
    attention.py   3, 4  attention by hand, then in the model
    decoding.py    5, 6  prefill and decode with the KV cache; greedy
    choosing.py    7, 8, 9  temperature; top-k, top-p, min-p; the draw
    penalties.py   10  penalties and stops
    beams.py       11  beam search
    chat.py        12  chat templates
    costs.py       13  TTFT, TPOT, throughput, memory
    speculation.py 14  speculative decoding: k proposals checked in one pass
    replay.py      15  a decode step's kernel calls, recorded once and replayed from C
"""
from . import attention, beams, chat, choosing, costs, decoding, penalties, positions, replay, speculation, tokens
from .lesson import Lesson

LESSONS = (
    Lesson("Tokens: text becomes ids", "the pre-tokenizer's words, BPE merges step by step, ids and pieces; GPT-2's "
           "ids when its files are here", tokens.run, ("nanollm/tokenizer/bpe.py", "bpe_merge")),
    Lesson("Embeddings and positions", "token vectors; GPT-2's learned position table; the sinusoidal table by hand; "
           "RoPE's angles", positions.run, ("nanollm/rope.py", "frequencies")),
    Lesson("Attention by hand", "three tokens: scores, causal mask, softmax, weights @ V, checked against the "
           "engine", attention.run_by_hand, ("nanollm/backends/numpy_backend.py", "NumpyBackend.attention")),
    Lesson("Attention in the model", "the demo model's attention weights, recomputed from its q and k, as a heat map",
           attention.run_in_model, ("nanollm/transformer.py", "attention")),
    Lesson("Prefill, decode and the KV cache", "the cache filling up; cached decode timed against recomputing every "
           "step", decoding.run_cache, ("nanollm/generation.py", "Batch.steps")),
    Lesson("Greedy and its loops", "greedy repeating itself with repetition_penalty=1, and the demo's 1.3 breaking "
           "the loop", decoding.run_greedy, ("nanollm/request.py", "resolve_settings")),
    Lesson("Temperature", "a 9-word vocabulary at T = 1, 0.1 and 5; softmax of [0.1, 0.2, 0.3, 0.8]",
           choosing.run_temperature, ("nanollm/sampling.py", "apply_temperature")),
    Lesson("Top-k, top-p, min-p", "which words each filter keeps, and why top-p keeps the word that crosses p",
           choosing.run_filters, ("nanollm/sampling.py", "top_p_filter")),
    Lesson("The draw", "inverse CDF with a uniform u; a seeded generate() redone by hand, u by u", choosing.run_draw,
           ("nanollm/sampling.py", "draw")),
    Lesson("Penalties and stops", "repetition, presence and frequency penalties; stop strings, EOS and length",
           penalties.run, ("nanollm/logits_processors.py", "process_logits")),
    Lesson("Beam search", "the finished beams and their scores, recomputed by hand; beam against greedy", beams.run,
           ("nanollm/beam_search.py", "beam_search")),
    Lesson("Chat templates", "a conversation as one text; every turn re-sends all of it", chat.run,
           ("nanollm/chat.py", "ChatTemplate.encode")),
    Lesson("The numbers: TTFT, TPOT, throughput, memory", "a run's stats explained, the KV cache's size by hand, "
           "a batch's throughput", costs.run, ("nanollm/request.py", "record_timing")),
    Lesson("Speculative decoding", "a pass of k positions timed against one; prompt lookup on greedy's loop, the "
           "same tokens in fewer passes; tokens per pass by acceptance rate", speculation.run,
           ("nanollm/speculative.py", "Speculator.step")),
    Lesson("Replaying a decode step from C", "the kernel calls of a step, recorded once, checked bit for bit, "
           "replayed; the Python they cost", replay.run, ("nanollm/replayed_step.py", "ReplayedStep.step")),
)

__all__ = ["LESSONS", "Lesson"]
