"""`make bench-tokenizer`: nanollm's pure-Python BPE against tiktoken (Rust), in one process, three parts.

1. The mixed corpus: ~1 MB generated here, deterministically (``random.Random(0)``), as a mix of the things tokenizers
   meet: English prose, Python code, CJK text, emoji (including multi-codepoint ones), digits, and runs of spaces,
   tabs and newlines. Both sides encode the whole string with special tokens treated as text, single-threaded
   (tiktoken's ``encode_ordinary``), ``BENCH_REPEATS`` times alternately, best time kept. "cold" is a fresh
   Tokenizer, so its caches start empty (the honest figure for a first encode), "warm" the same tokenizer again.
   Target (issue 13): cold at least half tiktoken's MB/s.
2. Pathological inputs, 1 MB each, the kinds that once took nanollm seconds: a run of one character, a repeat of
   two, one huge word of random letters, runs of spaces, of newlines, of mixed whitespace, and digits. Each is
   encoded ``BENCH_REPEATS`` times by each side, alternately, nanollm's caches empty every time, best time kept (one
   run each let tiktoken's own spread, 0.33-0.42 s on the random word, move the ratio by a quarter); the ids must be
   equal. Target: at most 3x tiktoken's time.
   (tiktoken's own merge loop grows faster than linearly on a 1 MB word, so at 100 KB the ratios are higher.)
3. Training: ``train_bpe`` against minbpe's algorithm (written here from scratch: count every pair, merge the most
   frequent, repeat), 256 merges on ~185 KB of generated English-like prose (minbpe's taylorswift.txt is not
   available offline), once as one long word and once cut into words by the cl100k regex. Target: at most 1x minbpe.
"""
import os
import random
import shutil
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import tiktoken

from nanollm.tokenizer import Tokenizer, load_tiktoken
from nanollm.tokenizer.byte_level import (
    CL100K_PATTERN,
    R50K_PATTERN,
    ByteLevelBPE,
    compile_pattern,
    load_tiktoken_ranks,
)
from nanollm.tokenizer.train import train_bpe

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers"
TARGET_BYTES = 1_000_000
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
PATHOLOGICAL_BYTES = 1_000_000
TRAIN_BYTES = 185_000  # the size of minbpe's taylorswift.txt
TRAIN_VOCAB = 512  # 256 merges, as in the measurement
TARGET_COLD_MBPS = 0.5  # nanollm's cold MB/s over tiktoken's, at least
TARGET_PATHOLOGICAL = 3.0  # nanollm's time over tiktoken's, at most
TARGET_TRAINING = 1.0  # train_bpe's time over minbpe's algorithm's, at most

WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which but have an they "
    "you were her she there one all we their been has would when if so no will can more about said what out up time "
    "into them some could other than then now only its two may first new like these over such after most also "
    "through where before between should because each those people under while state world year however system "
    "government development number during without against program information public different children science "
    "language model tokenizer inference attention transformer matrix vector gradient probability distribution "
    "Wednesday October Mississippi don't can't it's we're they've I'll she'd John's"
).split()
CODE = [
    "def forward(self, x):\n    return self.proj(torch.relu(self.fc(x)))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "    if key not in cache:\n        cache[key] = compute(key, *args, **kwargs)\n",
    'print(f"{name!r}: {value:>10.3f} ({percent:.1%})")\n',
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id;\n",
    "        x = np.einsum('bhtd,bhsd->bhts', q, k) / math.sqrt(d)  # (B, nh, T, T)\n",
]
# The most frequent simplified Chinese characters, roughly in frequency order.
CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
    "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
    "知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最"
    "间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市"
    "眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计"
    "或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让"
    "认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办"
    "运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持"
    "取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞"
    "观争究包组造落视济喜离虽坏兴"
)
EMOJI = ["🤗", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "🔥", "✨", "😀😃😄", "❤️", "🧑‍💻", "🎉"]
WHITESPACE = ["  ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "   \n", " \u00a0 ", "\u3000"]


def make_corpus(target_bytes: int = TARGET_BYTES, seed: int = 0) -> str:
    """About ``target_bytes`` of UTF-8: ~55% prose, ~20% code, ~12% CJK, ~5% emoji, the rest digits and whitespace."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < target_bytes:
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
            chunk = " ".join(words).capitalize() + rng.choice([". ", ".\n", "! ", "? ", ", "])
        elif kind < 0.75:
            chunk = rng.choice(CODE)
        elif kind < 0.87:
            chunk = "".join(rng.choice(CJK) for _ in range(rng.randint(5, 40))) + "。"
        elif kind < 0.92:
            chunk = " ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 5))) + " "
        else:
            chunk = str(rng.randint(0, 10 ** rng.randint(1, 12))) + rng.choice(WHITESPACE)
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def pathological_inputs(size: int = PATHOLOGICAL_BYTES, seed: int = 0) -> dict[str, str]:
    """The inputs that once made nanollm seconds slower than tiktoken, ``size`` bytes each (tests use them short)."""
    rng = random.Random(seed)
    return {
        '"x" * n': "x" * size,
        '"ab" * n/2': "ab" * (size // 2),
        "random-letter word": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=size)),
        "spaces": " " * size,
        "newlines": "\n" * size,
        "mixed whitespace": "".join(rng.choices(" \n\t", k=size)),
        "digits": "".join(rng.choices("0123456789", k=size)),
    }


def make_prose(target_bytes: int = TRAIN_BYTES, seed: int = 0) -> str:
    """English-like prose from ``WORDS``: sentences of 5-25 words, with paragraph breaks."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < target_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))).capitalize()
        parts.append(sentence + rng.choice([". ", ". ", ", ", "! ", "? ", ".\n", ".\n\n"]))
        size += len(parts[-1].encode("utf-8"))
    return "".join(parts)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def compare(name: str, make_nanollm, reference: tiktoken.Encoding, text: str) -> None:
    megabytes = len(text.encode("utf-8")) / 1e6
    cold, warm, ref = float("inf"), float("inf"), float("inf")
    for _ in range(REPEATS):  # alternate the two sides so background load hits both alike
        tok = make_nanollm()
        start = time.perf_counter()
        ids = tok.encode(text)
        cold = min(cold, time.perf_counter() - start)
        warm = min(warm, best_time(lambda: tok.encode(text), 1))
        ref = min(ref, best_time(lambda: reference.encode_ordinary(text), 1))
    if ids != reference.encode_ordinary(text):
        sys.exit(f"{name}: nanollm and tiktoken disagree on the benchmark corpus")
    print(f"{name:7s} nanollm cold {megabytes / cold:6.2f} MB/s   warm {megabytes / warm:6.2f} MB/s   "
          f"tiktoken {megabytes / ref:6.2f} MB/s   ({len(ids)} tokens, identical)")
    print(f"{'':7s} cold MB/s nanollm/tiktoken {ref / cold:4.2f}x (target >= {TARGET_COLD_MBPS}x), "
          f"warm {ref / warm:4.2f}x")


def compare_pathological(name: str, model: ByteLevelBPE, reference: tiktoken.Encoding) -> None:
    """Each pathological input ``REPEATS`` times per side, alternately, nanollm with empty caches each time (a new
    model sharing the loaded tables); the best time of each side."""
    for label, text in pathological_inputs().items():
        ours, theirs = float("inf"), float("inf")
        for _ in range(REPEATS):
            fresh = ByteLevelBPE(token_ids=model.token_ids, pair_ranks=model.pair_ranks,
                                 pre_tokenizer=model.pre_tokenizer, whole_word_first=model.whole_word_first)
            start = time.perf_counter()
            ids = fresh.encode_ordinary(text)
            ours = min(ours, time.perf_counter() - start)
            start = time.perf_counter()
            expected = reference.encode_ordinary(text)
            theirs = min(theirs, time.perf_counter() - start)
        if ids != expected:
            sys.exit(f"{name}: nanollm and tiktoken disagree on {label}")
        print(f"{name:7s} {label:20s} nanollm {ours:6.3f} s   tiktoken {theirs:6.3f} s   "
              f"nanollm/tiktoken {ours / theirs:5.2f}x (target <= {TARGET_PATHOLOGICAL:.0f}x)   ids identical")


def minbpe_train(chunks: list[str], vocab_size: int) -> list[tuple[int, int, int]]:
    """minbpe's training loop, from scratch: every chunk as a list of byte ids (repeats not merged together); each
    step counts every adjacent pair, merges the most frequent everywhere into the next id, and repeats."""
    sequences = [list(chunk.encode("utf-8")) for chunk in chunks]
    merges = []
    for new_id in range(256, vocab_size):
        counts: dict[tuple[int, int], int] = {}
        for ids in sequences:
            for pair in pairwise(ids):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = max(counts, key=counts.get)
        merges.append((*pair, new_id))
        sequences = [_minbpe_merge(ids, pair, new_id) for ids in sequences]
    return merges


def _minbpe_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """[1, 2, 3, 1, 2], (1, 2), 4 -> [4, 3, 4]"""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def compare_training() -> None:
    """train_bpe against minbpe's loop on the same prose: as one word (a pattern matching everything), then cut by
    the cl100k regex (minbpe's RegexTokenizer trains on the same chunks)."""
    prose = make_prose()
    for label, pattern in (("one long word", r"[\s\S]+"), ("cl100k words", CL100K_PATTERN)):
        start = time.perf_counter()
        ours = train_bpe(prose, TRAIN_VOCAB, pattern=pattern)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = minbpe_train(compile_pattern(pattern).findall(prose), TRAIN_VOCAB)
        theirs_s = time.perf_counter() - start
        print(f"train   {label:20s} train_bpe {ours_s:6.3f} s   minbpe's loop {theirs_s:6.3f} s   "
              f"train_bpe/minbpe {ours_s / theirs_s:5.2f}x (target <= {TARGET_TRAINING:.0f}x)   "
              f"({len(ours.merges)} and {len(theirs)} merges)")


def main() -> None:
    if not SHARED.is_dir():
        sys.exit(f"the reference tokenizer files are not in {SHARED}")
    text = make_corpus()
    print(f"corpus: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(text)} characters; best of {REPEATS} runs")

    with tempfile.TemporaryDirectory() as directory:
        shutil.copy(SHARED / "gpt2" / "encoder.json", directory)
        shutil.copy(SHARED / "gpt2" / "vocab.bpe", directory)
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        gpt2_ref = tiktoken.Encoding(
            "gpt2", pat_str=R50K_PATTERN, special_tokens={"<|endoftext|>": 50256},
            mergeable_ranks=data_gym_to_mergeable_bpe_ranks(f"{directory}/vocab.bpe", f"{directory}/encoder.json"),
        )
        compare("gpt2", lambda: Tokenizer.from_pretrained(directory), gpt2_ref, text)
        compare_pathological("gpt2", Tokenizer.from_pretrained(directory).model, gpt2_ref)

    ranks_path = SHARED / "cl100k" / "cl100k_base.tiktoken"
    cl100k = load_tiktoken(ranks_path)
    cl100k_ref = tiktoken.Encoding("cl100k", pat_str=CL100K_PATTERN, mergeable_ranks=load_tiktoken_ranks(ranks_path),
                                   special_tokens=cl100k.special_tokens)
    compare("cl100k", lambda: load_tiktoken(ranks_path), cl100k_ref, text)
    compare_pathological("cl100k", cl100k.model, cl100k_ref)
    print(f"training: {len(make_prose().encode('utf-8')) / 1e3:.0f} KB of generated prose, {TRAIN_VOCAB} tokens")
    compare_training()


if __name__ == "__main__":
    main()
