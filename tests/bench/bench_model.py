"""`make bench`: nanollm's NumPy engine against transformers on CPU, in one process, with the same threads.

Three random-weight checkpoints written by transformers: GPT-2 124M (GPT2Config() defaults), a Llama shape with
grouped-query heads, and Qwen2.5-0.5B's shape (24 layers, 14 query / 2 key-value heads, q/k/v biases, a
tied 151,936-token output projection: the vocabulary is a third of its weights). For each engine: prefill of a
128-token prompt, and the mean time per output token over 128 greedy decode steps with that engine's KV cache. Runs alternate between the engines (A B A B ...) and the median is
reported, so background load hits both alike. Ratios below 1.0 mean nanollm is faster.
"""
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import nanollm

PROMPT_TOKENS, NEW_TOKENS, REPEATS = 128, 128, int(os.environ.get("BENCH_REPEATS", "3"))


def time_nanollm(model, prompt):
    cache = model.new_cache(batch_size=1, max_len=PROMPT_TOKENS + NEW_TOKENS)
    t0 = time.perf_counter()
    logits = model.step(prompt, cache)  # (1, 1, V)
    t1 = time.perf_counter()
    for _ in range(NEW_TOKENS):
        token = int(np.argmax(logits[0, -1]))
        logits = model.step(np.array([[token]]), cache)
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / NEW_TOKENS


@torch.inference_mode()
def time_transformers(model, prompt):
    ids = torch.from_numpy(prompt)
    t0 = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    past = out.past_key_values
    for _ in range(NEW_TOKENS):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(token, past_key_values=past, use_cache=True)
        past = out.past_key_values
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / NEW_TOKENS


def bench(name, hf_model):
    with tempfile.TemporaryDirectory() as d:
        hf_model.save_pretrained(d, safe_serialization=True)
        ours = nanollm.load(d)
    hf_model.eval()
    prompt = np.random.default_rng(0).integers(0, ours.config.vocab_size, (1, PROMPT_TOKENS))
    time_nanollm(ours, prompt[:, :8]), time_transformers(hf_model, prompt[:, :8])  # warm-up
    runs = {"nanollm": [], "transformers": []}
    for _ in range(REPEATS):
        runs["nanollm"].append(time_nanollm(ours, prompt))
        runs["transformers"].append(time_transformers(hf_model, prompt))
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in runs.items()}
    (np_pre, np_tok), (hf_pre, hf_tok) = med["nanollm"], med["transformers"]
    print(f"{name:<24}{'prefill 128 (ms)':>18}{'decode / token (ms)':>22}")
    print(f"{'  nanollm (numpy)':<24}{np_pre * 1e3:>18.1f}{np_tok * 1e3:>22.2f}")
    print(f"{'  transformers (torch)':<24}{hf_pre * 1e3:>18.1f}{hf_tok * 1e3:>22.2f}")
    print(f"{'  ratio nanollm/hf':<24}{np_pre / hf_pre:>18.2f}{np_tok / hf_tok:>22.2f}")
    sys.stdout.flush()


def main():
    torch.manual_seed(0)
    print(f"threads: torch {torch.get_num_threads()}, numpy (BLAS) "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; {REPEATS} alternating runs, medians\n")
    bench("GPT-2 124M", GPT2LMHeadModel(GPT2Config()))
    bench("Llama (GQA 12q/4kv)", LlamaForCausalLM(LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)))
    bench("Qwen2.5-0.5B shape", Qwen2ForCausalLM(Qwen2Config(  # its config.json, with random weights
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_parameters={"rope_type": "default",
        "rope_theta": 1000000.0}, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)))


if __name__ == "__main__":
    main()
