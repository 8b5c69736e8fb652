"""The GPU check's environment: a venv that sees every package of the Python that creates it.

`python -m tests.gpu.venv DIR` (the Makefile's gpu-check target; it then installs nanollm from the checkout into DIR
with pip: editable, no index, no dependencies, no build isolation, so nothing is fetched and `nanollm.kernels` maps
to the checkout's kernels/ as setup.py says).

Why not `python -m venv --system-site-packages`: that option shows the *base* interpreter's packages, and the Python
holding torch and CuPy is often a venv itself (on the GPU machines this project runs on, python3 is
/opt/torch/.venv/bin/python3), whose packages the base interpreter does not have. So the new venv gets one .pth file
that adds the creating Python's site directories after its own, through site.addsitedir (which also runs their .pth
files, as at that Python's start-up). The venv is made without pip (no ensurepip needed): pip comes from there too.
"""
import site
import subprocess
import sys
import venv
from pathlib import Path

PTH_NAME = "parent-site-packages.pth"


def parent_site_dirs() -> list[str]:
    """This Python's site directories: the ones its start-up added to sys.path, user site included when enabled."""
    dirs = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def create(directory: Path) -> Path:
    """Make the venv at directory (anew) and link this Python's packages into it. -> its site-packages"""
    venv.EnvBuilder(clear=True, with_pip=False).create(directory)
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"  # the new venv's site-packages
    purelib = subprocess.run([directory / "bin" / "python", "-c", ask], check=True, capture_output=True,
                             text=True).stdout.strip()
    # A .pth line that starts with "import" is executed (the site module's documentation): one line, every directory.
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in parent_site_dirs())
    (Path(purelib) / PTH_NAME).write_text(line + "\n")
    return Path(purelib)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.gpu.venv DIR")
    create(Path(sys.argv[1]))
