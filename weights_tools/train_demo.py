"""Train the demo model that ships inside nanollm: a small GPT-2 that runs when no other model is reachable.

    python -m weights_tools.train_demo                   # writes nanollm/demo_model/ (needs torch + transformers)
    python -m weights_tools.train_demo --out /tmp/demo --steps 50    # a quick look at the pipeline

Everything it needs is on every machine that has Python, so anyone can reproduce it:
  data       the standard library's `pydoc_data/topics.py`: the documentation text behind `help("if")`,
             `help("FORMATTING")` ... (about 465,000 characters in Python 3.11). Topics are sorted by name and each
             ends with <|endoftext|>; the last topics (about 10% of the text) are held out to measure validation loss.
  tokenizer  a byte-level BPE trained by nanollm's own trainer (nanollm/tokenizer/train.py), GPT-2's pre-tokenizer
             regex, 1,024 ids (256 bytes + 767 merges + <|endoftext|>).
  model      GPT-2's architecture (transformers' GPT2LMHeadModel, trained with torch), sizes in `DemoSettings`;
             AdamW, linear warm-up then cosine decay, fixed seed.
  output     config.json, generation_config.json, model.safetensors (float16, written by nanollm's own
             safetensors writer), nanollm_tokenizer.json, and README.md with the settings and the loss curve.

torch and transformers are test-only dependencies: this script is the one place outside tests/ that imports them,
and nanollm reads its output with NumPy alone. Training is deterministic for a given Python version (the text),
torch version and thread count; the exact numbers of the shipped run are in nanollm/demo_model/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pydoc_data.topics

from nanollm.files import write_text
from nanollm.tokenizer import Tokenizer
from nanollm.tokenizer.train import train_bpe

from .safetensors import save_safetensors

EOT = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "nanollm" / "demo_model"


@dataclass(frozen=True)
class DemoSettings:
    vocab_size: int = 1024  # tokenizer size, <|endoftext|> included
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # hs = 32
    n_positions: int = 256  # context; training windows use all of it
    batch_size: int = 16
    steps: int = 800
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.1  # on the blocks' weight matrices only; not on norms, biases or the embeddings
    dropout: float = 0.1
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 1337
    threads: int = 1  # the machine is shared; more threads change the float rounding, so they are recorded


def corpus(val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(train documents, validation documents): the topics sorted by name; the last ones, about val_fraction of the
    characters, are held out (as nanoGPT holds out the end of its text)."""
    docs = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    total, seen = sum(map(len, docs)), 0
    for cut, doc in enumerate(docs):
        if seen >= (1 - val_fraction) * total:
            break
        seen += len(doc)
    return docs[:cut], docs[cut:]


def build_tokenizer(train_docs: list[str], s: DemoSettings):
    # <|endoftext|> is added as a special id after the merges; the merges never see it.
    return train_bpe("\n".join(train_docs), s.vocab_size, pattern="gpt2", special_tokens=(EOT,), eos_token=EOT)


def token_stream(tokenizer, docs: list[str]) -> list[int]:
    eot = tokenizer.eos_token_id
    ids = []
    for doc in docs:
        ids += tokenizer.encode(doc) + [eot]
    return ids


def hf_config(s: DemoSettings, eot: int) -> dict:
    """A GPT-2 config.json with every field nanollm and transformers read; nothing left to defaults."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": s.vocab_size,
        "n_positions": s.n_positions, "n_embd": s.n_embd, "n_layer": s.n_layer, "n_head": s.n_head,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "bos_token_id": eot, "eos_token_id": eot, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    }


def lr_at(step: int, s: DemoSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(s: DemoSettings, out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    train_docs, val_docs = corpus()
    text_sha = hashlib.sha256("".join(train_docs + val_docs).encode("utf-8")).hexdigest()
    t0 = time.time()
    bpe = build_tokenizer(train_docs, s)
    tokenizer = Tokenizer(bpe.parts())
    train_ids = torch.tensor(token_stream(tokenizer, train_docs))
    val_ids = torch.tensor(token_stream(tokenizer, val_docs))
    eot = tokenizer.eos_token_id
    print(f"tokenizer trained in {time.time() - t0:.1f}s; {len(train_ids):,} train / {len(val_ids):,} validation "
          f"tokens", file=sys.stderr)

    config = hf_config(s, eot)
    dropouts = dict(resid_pdrop=s.dropout, embd_pdrop=s.dropout, attn_pdrop=s.dropout)
    model = GPT2LMHeadModel(GPT2Config(**{**config, **dropouts}))
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "wte" not in n and "wpe" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(s.seed)
    T = s.n_positions

    def batch(ids, g):
        starts = torch.randint(0, len(ids) - T - 1, (s.batch_size,), generator=g)
        x = torch.stack([ids[i : i + T] for i in starts.tolist()])  # (B, T)
        y = torch.stack([ids[i + 1 : i + T + 1] for i in starts.tolist()])  # (B, T): the next token of each
        return x, y

    def loss_of(x, y):
        logits = model(x).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate():
        model.eval()
        losses = {}
        for name, ids in (("train", train_ids), ("val", val_ids)):
            g = torch.Generator().manual_seed(0)  # the same windows at every evaluation
            losses[name] = sum(loss_of(*batch(ids, g)).item() for _ in range(s.eval_batches)) / s.eval_batches
        model.train()
        return losses

    curve = []
    t0 = time.time()
    model.train()
    for step in range(s.steps + 1):
        if step % s.eval_every == 0 or step == s.steps:
            losses = evaluate()
            curve.append((step, losses["train"], losses["val"], time.time() - t0))
            print(f"step {step:5d}  train {losses['train']:.3f}  val {losses['val']:.3f}  "
                  f"{time.time() - t0:6.0f}s", file=sys.stderr)
        if step == s.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        loss = loss_of(*batch(train_ids, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    out.mkdir(parents=True, exist_ok=True)
    # named_parameters lists a tied weight once: lm_head.weight is wte.weight, so it is not saved (as transformers).
    tensors = {name: p.detach().numpy() for name, p in model.named_parameters()}
    save_safetensors(out / "model.safetensors", tensors, metadata={"format": "pt"},
                     dtypes={name: "F16" for name in tensors})
    write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": eot, "eos_token_id": eot, "repetition_penalty": 1.3}
    write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    bpe.save(out)
    n_params = sum(p.numel() for p in model.parameters())
    write_readme(out, s, curve, n_params=n_params, tokens=(len(train_ids), len(val_ids)), text_sha=text_sha,
                 seconds=time.time() - t0, torch_version=torch.__version__)
    print(f"wrote {out}", file=sys.stderr)


def write_readme(out: Path, s: DemoSettings, curve, *, n_params, tokens, text_sha, seconds, torch_version) -> None:
    rows = "\n".join(f"| {step:5d} | {tr:.3f} | {va:.3f} | {sec:6.0f} |" for step, tr, va, sec in curve)
    settings = "\n".join(f"| `{k}` | {v} |" for k, v in asdict(s).items())
    weights_bytes = (out / "model.safetensors").stat().st_size
    text = f"""# nanollm's demo model

A small GPT-2 that nanollm ships so that `python -m nanollm.generate "prompt"` produces text on a machine with no
network. It has read nothing but Python's own documentation, so expect text that *looks like* the Python reference
manual, not answers: its job is to show the engine working end to end, offline.

Reproduce it with `python -m weights_tools.train_demo` (script: `weights_tools/train_demo.py`; needs the test extras,
torch and transformers). Running it needs only numpy and regex.

## Data

`pydoc_data/topics.py` from the standard library (the text behind `help("keywords")`), from Python
{platform.python_version()}: topics sorted by name, each followed by `<|endoftext|>`; the last topics, about 10% of
the text, are held out for validation. Other Python versions carry slightly different text, so a rerun there gives a
slightly different model. sha256 of the topics concatenated in name order:

    {text_sha}

Tokens: {tokens[0]:,} for training, {tokens[1]:,} for validation.

## Tokenizer

Byte-level BPE trained by `nanollm.tokenizer.train.train_bpe` on the training topics: GPT-2's pre-tokenizer regex,
{s.vocab_size} ids (256 bytes, the merges, and `<|endoftext|>` as the last id, which is also BOS/EOS). Stored as
`nanollm_tokenizer.json`.

## Model and training

GPT-2 architecture, {n_params:,} parameters, stored as float16 ({weights_bytes:,} bytes in `model.safetensors`;
nanollm computes in float32). torch {torch_version} on CPU, {s.threads} thread(s), {seconds / 60:.1f} minutes.

| setting | value |
| --- | --- |
{settings}

Loss (cross-entropy in nats per token, mean of {s.eval_batches} fixed batches of {s.batch_size} x {s.n_positions}
tokens; uniform guessing would be ln {s.vocab_size} = {math.log(s.vocab_size):.2f}):

| step | train | validation | seconds |
| ---: | ---: | ---: | ---: |
{rows}

The validation topics are unseen documentation pages; the gap between the two columns is how much of the training
text the model has memorised rather than generalised.

`generation_config.json` asks for greedy decoding with a repetition penalty of 1.3: a model this small otherwise
repeats one phrase.
"""
    write_text(out / "README.md", text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights_tools.train_demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--threads", type=int, help="torch threads (default 1)")
    args = p.parse_args(argv)
    s = DemoSettings()
    if args.steps is not None:
        s = DemoSettings(**{**asdict(s), "steps": args.steps, "eval_every": max(1, min(s.eval_every, args.steps))})
    if args.threads is not None:
        s = DemoSettings(**{**asdict(s), "threads": args.threads})
    train(s, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
