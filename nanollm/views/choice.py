"""Every stage of one token choice, as --show-probs prints it: what the loop computed, in the order it computed it.

    step 3
      logits            ' the' 12.31   ' a' 11.20   ' an' 9.87
      after repetition 1.3  ' a' 11.20   ' the' 9.47   ' an' 9.87   (when a penalty, bias or min_new_tokens acted)
      / temperature 0.8 ' a' 14.00   ' an' 12.34   ' the' 11.84
      top-k 40          kept 40 tokens, cut 50217
      probabilities     ' a' 0.612   ' an' 0.116   ' the' 0.069
      top-p 0.9         cumulative 0.612 0.728 0.797 ... 0.904 crosses 0.9 at ' of' (kept); cut 50229 more
      min-p 0.05        cut 3 more: ' so'  ' it'  ' to'
      draw              u = 0.6731 -> ' an', the first token whose running total of probability passes u x total

A token a stage cut is written `cut`, never as a probability of 0 in its place. The chosen token is marked `<`.
The stages are logits_processors.Choice's, each the output of the function generation itself uses.
"""
import numpy as np

from ..logits_processors import Choice

COLUMNS = 22  # width of the stage names


def processors(p) -> str:
    """Which processors changed the logits, shortly: "repetition 1.3", "bias, presence 0.5" ... ("EOS held back"
    when only min_new_tokens did)."""
    named = [name for name, on in (("bias", p.logit_bias), (f"repetition {p.repetition_penalty:g}",
                                                            p.repetition_penalty != 1.0),
                                   (f"presence {p.presence_penalty:g}", p.presence_penalty != 0.0),
                                   (f"frequency {p.frequency_penalty:g}", p.frequency_penalty != 0.0)) if on]
    return ", ".join(named) if named else "EOS held back"


def format_choice(c: Choice, k: int, name=str) -> str:
    """The choice's stages as lines, k tokens a stage. name: token id -> its text (repr of the piece)."""
    def cells(values, cut=None, fmt=".3f") -> str:
        order = np.argsort(-values, kind="stable")[:k]  # the k largest, first come first among ties
        return "   ".join(f"{name(int(i))} " + ("cut" if cut is not None and cut[i] else format(float(values[i]), fmt))
                           + (" <" if i == c.token else "") for i in order)

    def line(stage: str, text: str) -> str:
        return f"  {stage:<{COLUMNS}}{text}"

    lines = [f"step {c.step}", line("logits", cells(c.raw, fmt=".2f"))]
    p = c.params
    if c.processed is not c.raw and not np.array_equal(c.processed, c.raw):
        lines.append(line("after " + processors(p), cells(c.processed, fmt=".2f")))
    if p.greedy:
        lines.append(line("greedy", f"the largest logit: {name(c.token)}"))
        return "\n".join(lines)
    lines.append(line(f"/ temperature {p.temperature:g}", cells(c.scaled, fmt=".2f")))
    if p.top_k > 0:
        lines.append(line(f"top-k {p.top_k}", f"kept {np.isfinite(c.after_top_k).sum()} tokens, cut "
                                              f"{len(c.cut('top_k'))}"))
    lines.append(line("probabilities", cells(c.probs, cut=~np.isfinite(c.after_top_k))))
    if p.top_p < 1.0:
        kept = np.sort(c.probs[c.after_top_p > 0])[::-1]  # the kept probabilities, most probable first
        running = " ".join(f"{x:.3f}" for x in np.cumsum(kept)[:8]) + (" ..." if len(kept) > 8 else "")
        lines.append(line(f"top-p {p.top_p:g}", f"cumulative {running} crosses {p.top_p:g} at "
                                                f"{name(c.top_p_crossing)} (kept); cut {len(c.cut('top_p'))} more"))
    if p.min_p > 0.0:
        cut = c.cut("min_p")
        shown = "  ".join(name(int(i)) for i in cut[np.argsort(-c.probs[cut])][:k])
        lines.append(line(f"min-p {p.min_p:g}", f"cut {len(cut)} more" + (f": {shown}" if len(cut) else "")))
    if p.top_p < 1.0 or p.min_p > 0.0:
        lines.append(line("what is left", cells(c.probs, cut=c.final == 0)))
    lines.append(line("draw", f"u = {c.u:.4f} -> {name(c.token)}, the first token whose running total of "
                              f"probability passes u x total"))
    return "\n".join(lines)
