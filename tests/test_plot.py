"""--plot (nanollm/views/plot.py): the attention heat map and time per token over the context, as PNG files.

matplotlib is the optional `viz` extra: the tests that draw skip with the reason when it is absent; the test of the
message that says how to install it runs either way.
"""
import struct

import numpy as np
import pytest

import nanollm
from nanollm.files import FileError
from nanollm.loader import DEMO_MODEL
from nanollm.views import plot
from nanollm.views.attention import attention_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo():
    return nanollm.load(DEMO_MODEL)


def check_png(path, min_bytes: int = 10_000, max_bytes: int = 3_000_000) -> np.ndarray:
    """A whole, decodable PNG of a reasonable size -> its pixels (H, W, 4)."""
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed (pip install nanollm[viz])")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 300 <= width <= 2000 and 300 <= height <= 2000
    assert min_bytes <= len(data) <= max_bytes
    pixels = image.imread(path)  # decodes every chunk: a truncated or corrupt file fails here
    assert pixels.shape[:2] == (height, width)
    return pixels


def colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def test_attention_heat_map_is_written_as_a_png(demo, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install nanollm[viz])")
    m = attention_maps(demo, "Once upon a time there was", 2, max_new_tokens=6, temperature=0)
    path = tmp_path / "attention.png"
    plot.plot_attention(m, path)
    pixels = check_png(path)
    assert colours(pixels) > 50  # a heat map, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.png"]  # no temporary file left behind


def test_step_times_are_written_as_a_png(demo, tmp_path):
    """A cached run and one that recomputes every position (kv_cache=False), one line each."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install nanollm[viz])")
    runs = [demo.generate("Once upon a time", max_new_tokens=20, temperature=0, eos_token_ids=[], kv_cache=cached)
            for cached in (True, False)]
    assert all(len(r.stats.step_times_s) == 19 for r in runs)  # 20 tokens: the first from prefill, 19 steps
    path = tmp_path / "steps.png"
    plot.plot_step_times([r.stats for r in runs], path, labels=["KV cache", "no KV cache"])
    assert colours(check_png(path)) > 20


def test_labels_must_match_the_runs(demo, tmp_path):
    stats = demo.generate("Hi", max_new_tokens=3, temperature=0).stats
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot.plot_step_times([stats], tmp_path / "x.png", labels=["a", "b"])


def test_a_directory_where_the_png_should_go_is_one_error_naming_it(demo, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install nanollm[viz])")
    m = attention_maps(demo, "Hi", 0, max_new_tokens=2, temperature=0)
    (tmp_path / "out.png").mkdir()
    with pytest.raises(FileError, match="out.png: it is a directory"):
        plot.plot_attention(m, tmp_path / "out.png")


def test_without_matplotlib_each_plot_says_how_to_install_it(demo, monkeypatch, tmp_path):
    m = attention_maps(demo, "Hi", 0, max_new_tokens=2, temperature=0)
    monkeypatch.setattr(plot, "Figure", None)  # as when `from matplotlib.figure import Figure` failed
    for draw in (lambda: plot.plot_attention(m, tmp_path / "a.png"),
                 lambda: plot.plot_step_times([demo.generate("Hi", max_new_tokens=3).stats], tmp_path / "s.png")):
        with pytest.raises(ImportError, match=r"pip install 'nanollm\[viz\]'"):
            draw()
    assert not list(tmp_path.iterdir())
