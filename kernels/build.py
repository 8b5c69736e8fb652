"""Compile every kernel and report its resources: `python kernels/build.py --nvcc` (what `make kernels` runs).

--nvcc      compile each kernels/*.cu with nvcc to a cubin for sm_80 (A100) and sm_90 (H100), with `-Xptxas -v` so
            ptxas reports, per kernel, the registers per thread, static shared memory and spilled bytes. Prints
            them as one table and exits non-zero on a compile error or on any spill (a spill moves registers to
            slow local memory: a kernel that spills needs fewer live values or a smaller tile). Without nvcc on
            PATH it says so and exits 0, so CI machines without CUDA pass.

Files can be named on the command line; the default is every .cu file beside this script. This script needs only
the standard library, so `make kernels` runs it with any python3, with nanollm not installed and no NumPy. (It
imports nothing of nanollm for that reason: building the kernels for the CPU emulator is what the kernel tests do,
through nanollm.kernels.emulator.EmuModule.)
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent
ARCHITECTURES = ("sm_80", "sm_90")

# What ptxas -v prints for each kernel (CUDA 12/13):
#   ptxas info    : Compiling entry function 'softmax_rows' for 'sm_80'
#   ptxas info    : Function properties for softmax_rows
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 12 registers, used 1 barriers, 4096 bytes smem, 372 bytes cmem[0]
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list:
    """ptxas -v output -> one dict per (kernel, arch): registers, smem, stack, spill_stores, spill_loads."""
    rows, row = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            row = {"kernel": m.group(1), "arch": m.group(2), "registers": 0, "smem": 0, "stack": 0,
                   "spill_stores": 0, "spill_loads": 0}  # fmt: skip
            rows.append(row)
        elif row is None:
            continue
        elif m := _SPILLS.search(line):
            row["stack"], row["spill_stores"], row["spill_loads"] = (int(g) for g in m.groups())
        elif m := _USED.search(line):
            row["registers"] = int(m.group(1))
            if s := _SMEM.search(line):
                row["smem"] = int(s.group(1))
    return rows


def compile_nvcc(nvcc: str, source: Path, arch: str, options: list, out_dir: Path):
    """Run nvcc on one file for one architecture -> (return code, ptxas/compiler output)."""
    command = [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-I", str(KERNELS_DIR), *options,
               "-o", str(out_dir / f"{source.stem}.{arch}.cubin"), str(source)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    return result.returncode, result.stderr + result.stdout


def format_table(rows: list) -> str:
    header = f"{'file':<22} {'kernel':<32} {'arch':<6} {'regs':>5} {'smem B':>8} {'stack B':>8} {'spill B':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        spill = r["spill_stores"] + r["spill_loads"]
        lines.append(f"{r['file']:<22} {r['kernel']:<32} {r['arch']:<6} {r['registers']:>5} {r['smem']:>8} "
                     f"{r['stack']:>8} {spill:>8}" + ("  <- SPILL" if spill else ""))
    return "\n".join(lines)


def check_nvcc(sources: list, options: list) -> int:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not found on PATH: skipping the CUDA compile check (install the CUDA toolkit to run it)")
        return 0
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="nanollm-cubin-") as out_dir:
        for source in sources:
            for arch in ARCHITECTURES:
                code, output = compile_nvcc(nvcc, source, arch, options, Path(out_dir))
                if code != 0:
                    failures.append(f"{source.name} ({arch}) failed to compile:\n{output}")
                    continue
                rows.extend({"file": source.name, **r} for r in parse_ptxas(output))
    if rows:
        print(format_table(rows))
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    for failure in failures:
        print(failure, file=sys.stderr)
    for r in spills:
        print(f"{r['file']}: kernel {r['kernel']} spills on {r['arch']} ({r['spill_stores']} bytes stored, "
              f"{r['spill_loads']} loaded)", file=sys.stderr)
    print(f"{len(sources)} files, {len(rows)} kernel builds, {len(failures)} compile errors, {len(spills)} spills")
    return 1 if failures or spills else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="the .cu files (default: every kernels/*.cu)")
    parser.add_argument("--nvcc", action="store_true", required=True, help="compile with nvcc for sm_80 and sm_90")
    parser.add_argument("--nvcc-option", action="append", default=[], help="an extra nvcc flag (repeatable)")
    args = parser.parse_args(argv)
    sources = args.files or sorted(KERNELS_DIR.glob("*.cu"))
    if not sources:
        print(f"no .cu files in {KERNELS_DIR}: nothing to compile")
        return 0
    return check_nvcc(sources, args.nvcc_option)


if __name__ == "__main__":
    sys.exit(main())
