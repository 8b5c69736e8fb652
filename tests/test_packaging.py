"""What `pip install .` installs: nanollm and weights_tools, the kernels inside nanollm, no top-level `kernels`.

The repository keeps kernels/ at its top level, beside nanollm/, but setup.py installs it as `nanollm.kernels`
(package_dir): a top-level package named `kernels` would collide with the unrelated PyPI distribution of that name,
and a user with both installed would get whichever was installed last. These tests build the wheel that
`pip install .` installs (from a copy of the sources, so nothing is written into the checkout), read its file list,
then import it from outside the checkout with no site-packages of its own and run one kernel on the emulator, which
must find its .cu, .h and .cpp files inside the installed package and compile them.

A wheel of pure Python (py3-none-any) is installed by unpacking it into site-packages, which is what the second
test does. It needs pip and setuptools importable offline (--no-build-isolation: nothing is downloaded); without
them it skips with the reason.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nanollm.kernels import KERNELS_DIR

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "nanollm", "weights_tools", "kernels")  # everything setup.py reads
KERNEL_FILES = (".cu", ".cuh", ".h", ".cpp", ".py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from a copy of the sources (built once for the module)."""
    for tool in ("pip", "setuptools"):
        if importlib.util.find_spec(tool) is None:
            pytest.skip(f"{tool} is not installed, so no wheel can be built offline")
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
               "-w", str(tmp / "dist")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (built,) = (tmp / "dist").glob("nanollm-*.whl")
    return built


def test_wheel_installs_the_kernels_inside_nanollm(wheel):
    """No top-level kernels/ in the wheel; every kernel source and the emulator's Python and C++ under nanollm/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"nanollm", "weights_tools", "nanollm-0.1.0.dist-info"}, top_level
    assert not any(name.startswith("kernels/") for name in names)
    expected = {f"nanollm/kernels/{p.relative_to(KERNELS_DIR).as_posix()}" for p in KERNELS_DIR.rglob("*")
                if p.suffix in KERNEL_FILES and "__pycache__" not in p.parts}  # fmt: skip
    assert {"nanollm/kernels/attention.cu", "nanollm/kernels/common.cuh", "nanollm/kernels/emulator/__init__.py",
            "nanollm/kernels/emulator/cuda_emulator.h", "nanollm/kernels/emulator/cuda_emulator.cpp"} <= expected
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"


# Run outside the checkout, with the unpacked wheel first on the path and no site-packages (-S): so neither the
# checkout nor an editable install can answer an import.
INSTALLED_CHECK = """
import importlib.util, sys
from pathlib import Path
site = Path(sys.argv[1])
spec = importlib.util.find_spec("kernels")
assert spec is None or not Path(spec.origin).is_relative_to(site), f"import kernels finds {spec.origin}"
import numpy as np
import nanollm.kernels
from nanollm.backends import EmulatorBackend
from nanollm.kernels.emulator import HEADER
assert nanollm.kernels.KERNELS_DIR.is_relative_to(site) and HEADER.is_relative_to(site), nanollm.kernels.KERNELS_DIR
be = EmulatorBackend()
x = be.asarray(np.arange(5))
print(be.add(x, x).tolist())
"""


def test_installed_wheel_runs_a_kernel_from_its_own_files(wheel, tmp_path):
    """Unpacked as pip installs it: `import kernels` finds nothing, and the emulator compiles elementwise.cu from
    the installed package (into an empty cache, so it really compiles) and adds [0..4] to itself."""
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    numpy_site = Path(np.__file__).resolve().parents[1]  # NumPy and regex, the runtime dependencies
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{numpy_site}", NANOLLM_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-S", "-c", INSTALLED_CHECK, str(site)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0.0, 2.0, 4.0, 6.0, 8.0]"
    assert list((tmp_path / "cache" / "emulator").glob("elementwise-*.so")), "the kernel was not compiled here"
