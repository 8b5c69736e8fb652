"""What a learner watches: views of inference as it happens, each built on the engine's own objects and code paths.

    choice.py     every stage of one token choice (--show-probs): raw logits, penalties, temperature, the cuts of
                  top-k / top-p / min-p, the uniform number drawn and the token it picked
    trace.py      every op of a forward pass, recorded by a backend that wraps the real one (--trace); with
                  speculative decoding, what each verification pass proposed, kept and added
    attention.py  attention weights of one layer, as a text heat map labelled with the tokens (--show-attention)
    plot.py       the same as images, and time per token over the context (--plot; matplotlib, the `viz` extra)

Nothing here changes what is computed: the views read what the loop and the backend already produce.
"""
