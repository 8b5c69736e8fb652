"""nanollm: a transformer inference engine written from scratch to be read."""
from setuptools import find_packages, setup

setup(
    name="nanollm",
    version="0.1.0",
    description="A from-scratch LLM inference engine (NumPy reference, CUDA kernels, BPE tokenizers)",
    python_requires=">=3.11",
    # The repository's kernels/ folder installs as nanollm.kernels: a top-level `kernels` would collide with the
    # unrelated PyPI distribution of that name (whichever was installed last would win).
    packages=[*find_packages(include=["nanollm", "nanollm.*", "weights_tools", "weights_tools.*"]),
              "nanollm.kernels", "nanollm.kernels.emulator"],
    package_dir={"nanollm.kernels": "kernels"},
    # The kernel sources ship with the package: the CuPy backend and the CPU emulator compile the CUDA ones at run
    # time, the cpu backend its own (*_cpu.cpp).
    package_data={
        "nanollm.kernels": ["*.cu", "*.cuh", "*.cpp", "*.h"],
        "nanollm.kernels.emulator": ["*.h", "*.cpp"],
        # The offline demo model (weights_tools/train_demo.py trains it): `python -m nanollm.generate` with no
        # network still produces text.
        "nanollm": ["demo_model/*"],
        "nanollm.serve": ["page.html"],  # GET / (nanollm/serve/server.py)
    },
    install_requires=["numpy>=1.26", "regex>=2023.0"],
    extras_require={
        "gpu": ["cupy-cuda13x"],  # CuPy built for CUDA 13, the toolkit and driver of the GPU machines this runs on
        "chat": ["jinja2>=3.1"],
        # --plot: attention heat maps and time per token as PNG files (nanollm/views/plot.py, the only user)
        "viz": ["matplotlib"],
        # Test-only reference libraries. torch is pinned: 2.13.0 is the CPU build on local disk; an unpinned torch
        # pulls a multi-GB CUDA build.
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers",
            "tiktoken",
            "tokenizers",
            "sentencepiece",
            "jinja2>=3.1",
            "matplotlib",  # the --plot tests draw real PNGs (tests/test_plot.py)
            "openai",  # the official client drives nanollm.serve in tests/test_serve*.py, as users' clients will
            # NVRTC 13, the compiler cupy-cuda13x uses on a GPU: CI compiles every kernel as the CuPy path will.
            "nvidia-cuda-nvrtc>=13,<14",
        ],
    },
)
