"""weights_tools: reading and writing checkpoint files without any deep-learning framework.

Read `safetensors.py` first: the file format every Hugging Face checkpoint uses, parsed and written from scratch.
Then torch_checkpoint.py (`pytorch_model.bin`, read without running its pickle), checkpoint.py (a directory's weights,
whichever format; `convert DIR OUT`), convert.py (a Hugging Face directory -> nanollm's config and weights), hub.py
(fetching one), llama2c.py, inspect.py, and train_demo.py (how the demo model shipped in nanollm was made).

How it sits with nanollm: weights_tools fills nanollm's data modules (config, weights) and uses its files and memory
helpers; nanollm.load (nanollm/loader.py) calls the readers here. Importing any nanollm module runs nanollm's
package (which imports its loader, which imports convert, hub and llama2c), so whichever package a program imports
first, the other is met halfway through its own imports. That is why the modules the loader uses import their
siblings as modules (`from . import safetensors`, then `safetensors.open_checkpoint(...)` when called) and never
take names from them at import time: a module object can be handed over half-built, a name not yet defined cannot.
For the same reason this file imports nothing: `python -m weights_tools.llama2c` must find the package empty, or
the loader would import llama2c before runpy runs it as __main__.
"""
