"""The model `python -m nanollm.generate` uses when none is named: GPT-2 if it can be had, else the shipped demo.

GPT-2 (124M) comes from the cache, or from the hub on first use (weights_tools.hub). When neither works -- no
network, `NANOLLM_OFFLINE=1`, a hub error -- one line on stderr says so and the small demo model inside the package
is used instead (nanollm/demo_model/, trained by weights_tools/train_demo.py), so the command always produces text.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .hub import HubError, resolve_model

DEFAULT_REPO = "gpt2"


def demo_model_path() -> Path:
    """The demo model's directory inside the installed nanollm package."""
    import nanollm

    return Path(nanollm.__file__).resolve().parent / "demo_model"


def default_model_path(*, stderr=None) -> Path:
    """GPT-2's local directory, fetched if needed; on failure a one-line notice and the demo model's directory."""
    try:
        return resolve_model(DEFAULT_REPO)
    except (HubError, OSError) as e:
        print(f"nanollm: GPT-2 is not available ({e}); using the small demo model shipped with nanollm instead",
              file=stderr or sys.stderr)
        return demo_model_path()
