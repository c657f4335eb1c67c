"""Compile check of the CUDA kernels without a GPU (`make cuda-check`).

nvcc compiles every csrc/cuda/*_kernels.cu for each architecture with -Xptxas -v; the script prints one line per
file (kernels, registers, spills, stack, time) and fails when nvcc fails or any kernel spills more bytes (stores +
loads) than its file's budget.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import subprocess
import sys
import time
from pathlib import Path

# Spill budget in bytes (stores + loads) per kernel and architecture. Every kernel compiles spill-free today; the
# CUDA-core prefill kernel, whose accumulators live in registers, may take a few bytes before we call it a regression.
# The tensor-core prefill kernel (prefill_wmma_kernels.cu) keeps its output in shared memory: 0 bytes.
SPILL_BUDGET = {"prefill_kernels.cu": 16}
DEFAULT_BUDGET = 0
# Per-file nvcc flags, as cmake/cuda.cmake sets them.
EXTRA_FLAGS = {"rotary_kernels.cu": ["--fmad=false"]}

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def check(nvcc: str, archs: list[str], src: Path, include: Path) -> tuple[bool, str]:
    gencode = []
    for a in archs:
        sm = a.replace(".", "")
        gencode += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
    cmd = [
        nvcc,
        "-std=c++20",
        "-O3",
        "-Xptxas",
        "-v",
        "--threads=2",
        *gencode,
        *EXTRA_FLAGS.get(src.name, []),
        "-I",
        str(include),
        "-c",
        str(src),
        "-o",
        "/dev/null",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        return False, f"{src.name}: nvcc failed ({dt:.1f} s)\n{proc.stderr[-4000:]}"
    budget = SPILL_BUDGET.get(src.name, DEFAULT_BUDGET)
    kernels, worst, over = {}, {"regs": 0, "spill": 0, "stack": 0}, []
    current = None
    for line in proc.stderr.splitlines():
        if m := ENTRY.search(line):
            current = (m.group(1), m.group(2))
            kernels[current] = {}
        elif current and (m := SPILL.search(line)):
            stack, stores, loads = map(int, m.groups())
            kernels[current].update(stack=stack, spill=stores + loads)
            worst["stack"] = max(worst["stack"], stack)
            worst["spill"] = max(worst["spill"], stores + loads)
            if stores + loads > budget:
                over.append(f"  {current[1]} {current[0]}: {stores} B spill stores + {loads} B spill loads")
        elif current and (m := REGS.search(line)):
            worst["regs"] = max(worst["regs"], int(m.group(1)))
    entries = {name for name, _ in kernels}
    line = (
        f"{src.name}: {len(entries)} kernels x {len(archs)} archs ({', '.join(archs)}), max {worst['regs']} "
        f"registers, max spill {worst['spill']} B (budget {budget} B), max stack {worst['stack']} B, {dt:.1f} s"
    )
    if not kernels:
        return False, f"{src.name}: ptxas reported no kernels\n{proc.stderr[-2000:]}"
    if over:
        return False, line + "\nSPILL BUDGET EXCEEDED:\n" + "\n".join(over)
    return True, line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nvcc", default="/usr/local/cuda-13.0/bin/nvcc")
    ap.add_argument("--arch", action="append", default=None, help="e.g. 8.0, 9.0a (repeatable)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("sources", nargs="+", type=Path)
    args = ap.parse_args()
    archs = args.arch or ["8.0", "9.0a"]
    include = Path(__file__).resolve().parents[2] / "csrc"
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: check(args.nvcc, archs, s, include), args.sources))
    for ok, text in results:
        print(("ok    " if ok else "FAIL  ") + text)
    failed = sum(not ok for ok, _ in results)
    print(f"cuda-check: {len(results) - failed}/{len(results)} files ok in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
