"""Speculative decoding: propose k tokens cheaply, check them all in one pass of the model, keep what it agrees with.

A decode step of one sequence reads every weight to compute one position: on a machine where that read is the cost
(memory-bound decode: `python -m nanollm.learn 14`), a pass over k+1 positions reads the same weights once and costs
about as much. So verifying k proposed tokens costs about one step, and each proposal the model accepts is a token
that cost no pass of its own. One round, for one sequence whose cache holds everything but its last token:

    context (prompt + tokens so far) --propose--> d_1 .. d_k        (PromptLookup, or DraftModel: a smaller model)
    [last, d_1 .. d_k] --one model.step against the cache--> logits of k+1 positions: p_0 .. p_k
    for i = 1 .. k: keep d_i with probability min(1, p_{i-1}(d_i) / q_i(d_i)); at the first rejection, draw the
                    token from norm(max(0, p_{i-1} - q_i)) instead and end the round
    all k kept: one more token from p_k (the model's own next token: a round always gains at least one)
    cache.truncate: the slots of the rejected proposals are forgotten, as if never written

p is the model's *processed* distribution at each position, the one plain decoding would draw from: logit bias,
penalties over the history as the kept tokens leave it, min_new_tokens' EOS suppression, temperature, top-k, top-p,
min-p (Batch.process, then sampling.filtered_probs). q is the distribution the proposal was drawn from: a point mass
for prompt lookup and a greedy draft. With this rule every token is distributed exactly as plain sampling's (Leviathan
et al. 2023, "Fast Inference from Transformers via Speculative Decoding", Theorem 1 and Appendix A.1; Chen et al.
2023, "Accelerating Large Language Model Decoding with Speculative Sampling"). Greedy is its point-mass case: p puts
all its mass on the argmax, so a proposal is kept exactly when it is the argmax, and the output is plain greedy's,
token for token. Each token, kept or drawn, goes through the batch's own `record` (history, timing, Batch.accept's
stops): a stop string or EOS inside a kept run ends the sequence there, and the rest of the run is dropped.

What it refuses (`check_speculative_request`): a batch of several prompts (each sequence would keep a different
number of tokens per round, and the batch's cache is one rectangle), beam search, kv_cache=False (there is no cache
to verify against), on_choice (--show-probs: a kept proposal was not drawn by the sampler it shows; --trace shows
each verification instead), and an assistant with another vocabulary or tokenizer (a proposal is a token id the
model must read as the same token).
"""
import copy
from dataclasses import dataclass

import numpy as np

from .logits_processors import draw_uniforms
from .sampling import draw, filtered_probs, refuse_nan


@dataclass
class Verification:
    """One verification pass, as --trace prints it."""

    step: int  # 1 for the first pass after the prefill
    proposed: list  # the proposals d_1 .. d_k (empty: the proposer had none, and the pass was a plain decode step)
    accepted: int  # how many of them the model kept (the first `accepted`)
    token: int | None  # the model's own token that ended the round (a correction, or the one after all k); None
    # when a stop inside the kept run ended the sequence first

    @property
    def tokens(self) -> list[int]:
        """The tokens this one pass gained: the kept proposals, then the model's own."""
        return self.proposed[: self.accepted] + ([] if self.token is None else [self.token])


def distribution(processed: np.ndarray, params) -> np.ndarray:
    """The distribution a token is drawn from, normalised: (V,) processed logits -> (V,) float64 probabilities.

    Sampling: sampling.filtered_probs, the pipeline plain decoding draws with. Greedy: all the mass on the first
    argmax, the token plain greedy picks (so the rejection rule below keeps a proposal only if it is that token).
    """
    if params.greedy:
        refuse_nan(processed.max())
        p = np.zeros(len(processed))
        p[np.argmax(processed)] = 1.0
        return p
    p = filtered_probs(processed, params.temperature, params.top_k, params.top_p, params.min_p).astype(np.float64)
    return p / p.sum()


def verify_token(p: np.ndarray, q: np.ndarray | None, proposal: int, u_keep: float, u_draw: float
                 ) -> tuple[int, bool]:
    """The rejection rule for one proposal: keep it with probability min(1, p(x) / q(x)), else draw from
    norm(max(0, p - q)). p, q: (V,) normalised; q None is a point mass on the proposal. -> (token, kept)

    Why the output is distributed as p: P(token = y) = q(y) min(1, p(y)/q(y)) + (1 - sum_z min(p(z), q(z))) *
    max(0, p(y) - q(y)) / sum_z max(0, p(z) - q(z)) = min(p(y), q(y)) + max(0, p(y) - q(y)) = p(y), since both sums
    equal 1 - sum_z min(p(z), q(z)). Example (greedy, u = 0): p = [0, 1, 0], x = 2 -> p(x) = 0, rejected;
    max(0, p - onehot(2)) = [0, 1, 0] -> token 1, the argmax.
    """
    q_x = 1.0 if q is None else q[proposal]
    if u_keep < p[proposal] / q_x:  # u_keep in [0, 1): p(x) >= q(x) always keeps; greedy (u = 0) keeps if p(x) > 0
        return proposal, True
    residual = np.maximum(p - q, 0.0) if q is not None else np.where(np.arange(len(p)) == proposal, 0.0, p)  # (V,)
    if residual.sum() <= 0:  # p == q up to rounding: a rejection that had probability ~0; p itself is the answer
        residual = p
    return draw(residual, u_draw), False


class PromptLookup:
    """Proposals copied from the context itself: find its last n tokens earlier in it, propose what followed there.

    As transformers' PromptLookupCandidateGenerator (generation/candidate_generator.py): n from
    max_matching_ngram_size down to 1, the first (leftmost) earlier occurrence that has a continuation, at most k
    tokens of it. No match: no proposals, and the round is an ordinary decode step. transformers also cuts the
    proposals at an EOS; here Batch.accept stops the sequence at a kept EOS, so a proposed EOS needs no rule of its
    own. Example: context [5, 6, 7, 9, 5, 6], n = 2, k = 3 -> [5, 6] occurs at 0, followed by [7, 9, 5].
    """

    name = "prompt lookup"

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram

    def propose(self, context: list[int], k: int) -> tuple[list[int], list]:
        """-> (at most k proposals, their q: None each, a point mass)."""
        ids = np.asarray(context)  # (L,)
        for n in range(min(self.max_ngram, len(ids) - 1), 0, -1):
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # (L-n, n): every n-gram but the last
            starts = np.flatnonzero((windows == ids[-n:]).all(axis=1))  # where the last n tokens occur earlier
            if starts.size:
                found = ids[starts[0] + n : starts[0] + n + k].tolist()
                return found, [None] * len(found)
        return [], []


class DraftModel:
    """Proposals from a smaller model with the same tokenizer, run token by token against its own KV cache.

    It proposes from its own processed distribution q (the same processors and sampling settings as the model's, over
    a copy of the history with its own proposals added): greedily when the request is greedy (q a point mass), else
    by drawing from q with the request's random generator. Its cache always holds a prefix of the context: each round
    it keeps the longest prefix of what it holds that the context still agrees with (truncating its rejected
    proposals) and runs the rest, one or two tokens after the first round, the whole prompt in the first.
    """

    name = "assistant model"

    def __init__(self, assistant, batch):
        self.model, self.batch = assistant, batch
        max_len = len(batch.seqs[0].prompt_ids) + batch.settings.max_new_tokens  # as the model's own cache
        self.cache = assistant.new_cache(batch_size=1, max_len=max_len)
        batch.stats.kv_cache_bytes += self.cache.nbytes

    def propose(self, context: list[int], k: int) -> tuple[list[int], list]:
        """-> (k proposals, their q: (V,) each, or None when greedy)."""
        batch, params = self.batch, self.batch.settings.sampling
        held = self.cache.ids[0, : min(self.cache.length, len(context) - 1)]  # the context's last token runs anyway
        agree = np.flatnonzero(held != np.asarray(context[: len(held)]))  # where the cache left the context
        self.cache.truncate(int(agree[0]) if agree.size else len(held))
        logits = self.model.step(np.array([context[self.cache.length :]]), self.cache)[:, -1]  # (1, V)
        history = copy.deepcopy(batch.history)  # the model's history, to which the proposals are added
        proposals, qs = [], []
        for i in range(k):
            q = distribution(batch.process(logits, batch.chosen + 1 + i, history)[0], params)  # (V,)
            token = int(np.argmax(q)) if params.greedy else draw(q, batch.rng.random())
            proposals.append(token)
            qs.append(None if params.greedy else q)
            if history is not None:
                history.add(np.array([token]))
            if i < k - 1:
                logits = self.model.step(np.array([[token]]), self.cache)[:, -1]  # (1, V)
        return proposals, qs


class Speculator:
    """The speculative decode step of a Batch of one sequence: `step()` in place of Batch.decode."""

    def __init__(self, batch, proposer, k: int):
        self.batch, self.proposer, self.k = batch, proposer, k
        self.rounds = 0
        batch.stats.proposer = proposer.name

    def step(self) -> list:
        """One round (the module docstring): propose, verify in one pass, keep, roll back. -> the batch's events"""
        batch, s = self.batch, self.batch.settings
        seq = batch.seqs[0]
        context = seq.prompt_ids + seq.token_ids
        room = s.max_new_tokens - batch.chosen - 1  # a round adds up to k + 1 tokens: never more than may come
        proposals, qs = self.proposer.propose(context, min(self.k, room)) if room > 0 else ([], [])
        ids = np.array([[context[-1], *proposals]])  # (1, k+1)
        logits = batch.model.step(ids, batch.cache, last_only=False)  # (1, k+1, V): p_0 .. p_k, one pass
        events, judged, kept, own = [], 0, 0, None  # proposals judged, kept; the model's own token ending the round
        for i, proposal in enumerate(proposals):  # in order: after a rejection or a stop, the rest are not judged
            p = distribution(batch.process(logits[:, i], batch.chosen + 1)[0], s.sampling)  # (V,)
            token, accepted = verify_token(p, qs[i], proposal, *draw_uniforms(s.sampling, batch.rng, 2))
            events += batch.record(np.array([token]))
            judged += 1
            if not accepted:
                own = token
                break
            kept += 1
            if not batch.running:  # a stop inside the kept run: what follows is dropped
                break
        else:  # every proposal kept (or none made): the model's own next token, chosen as plain decoding would
            events += batch.choose(logits[:, len(proposals)])
            own = int(batch.last[0])
        batch.cache.truncate(len(seq.prompt_ids) + len(seq.token_ids) - 1)  # all but the newest: rejections forgotten
        self.report(proposals, judged, kept, own)
        return events

    def report(self, proposals: list, judged: int, kept: int, own: int | None) -> None:
        """Add the round to the stats (the proposals judged: those after a stop never were); tell on_verify."""
        stats = self.batch.stats
        stats.proposed_tokens += judged
        stats.accepted_tokens += kept
        stats.acceptance_rate = stats.accepted_tokens / stats.proposed_tokens if stats.proposed_tokens else 0.0
        self.rounds += 1
        if self.batch.on_verify is not None:
            self.batch.on_verify(Verification(self.rounds, list(proposals), kept, own))


def speculator(batch, assistant) -> Speculator | None:
    """The Speculator a request asks for (prompt_lookup_num_tokens, or an assistant model), or None."""
    s = batch.settings
    if s.prompt_lookup_num_tokens is not None:
        return Speculator(batch, PromptLookup(s.max_matching_ngram_size), s.prompt_lookup_num_tokens)
    if assistant is not None:
        return Speculator(batch, DraftModel(assistant, batch), s.num_assistant_tokens)
    return None


def check_speculative_request(model, settings, prompts: list[list[int]], on_choice, assistant) -> None:
    """Refuse what speculative decoding does not do (the module docstring says why), before any pass runs."""
    lookup = settings.prompt_lookup_num_tokens is not None
    if not lookup and assistant is None:
        return
    what = f"prompt_lookup_num_tokens={settings.prompt_lookup_num_tokens}" if lookup else "assistant_model"
    if lookup and assistant is not None:
        raise ValueError("prompt_lookup_num_tokens and assistant_model are two proposers for speculative decoding: "
                         "give one")
    if len(prompts) > 1:
        raise ValueError(f"speculative decoding ({what}) runs one sequence; got a batch of {len(prompts)} prompts "
                         f"(each would keep a different number of tokens per pass): generate them one by one")
    if settings.num_beams > 1:
        raise ValueError(f"speculative decoding ({what}) and beam search (num_beams={settings.num_beams}) are two "
                         f"ways of decoding: give one")
    if not settings.kv_cache:
        raise ValueError(f"speculative decoding ({what}) verifies proposals against the KV cache: it cannot run "
                         f"with kv_cache=False")
    if on_choice is not None:
        raise ValueError(f"on_choice (--show-probs) shows each token's draw; speculative decoding ({what}) keeps "
                         f"or rejects proposals instead (--trace shows each verification): give one")
    if assistant is not None:
        check_assistant(model, assistant, len(prompts[0]) + settings.max_new_tokens)


def check_assistant(model, assistant, length: int) -> None:
    """An assistant must be a loaded model that reads the same token ids as the same tokens, and fit the sequence."""
    if not (hasattr(assistant, "step") and hasattr(assistant, "config")):
        raise TypeError(f"assistant_model must be a loaded model (nanollm.load), got {type(assistant).__name__}")
    mine, theirs = model.config.vocab_size, assistant.config.vocab_size
    if mine != theirs:
        raise ValueError(f"assistant_model has a vocabulary of {theirs} tokens and the model {mine}: speculative "
                         f"decoding needs the same tokenizer (a proposal is a token id the model reads)")
    if model.tokenizer is not None and assistant.tokenizer is not None:
        ours, its = model.tokenizer.decode_rules.token_bytes, assistant.tokenizer.decode_rules.token_bytes
        if ours != its or model.tokenizer.special_tokens != assistant.tokenizer.special_tokens:
            differ = [i for i in sorted(ours.keys() | its.keys()) if ours.get(i) != its.get(i)]
            where = f": token {differ[0]} is {ours.get(differ[0])!r} to the model, {its.get(differ[0])!r} to the " \
                    f"assistant" if differ else ": their special tokens differ"
            raise ValueError(f"assistant_model's tokenizer is not the model's{where}")
    if length > assistant.config.max_seq_len:
        raise ValueError(f"assistant_model's context of {assistant.config.max_seq_len} tokens is shorter than the "
                         f"prompt + max_new_tokens = {length}")
