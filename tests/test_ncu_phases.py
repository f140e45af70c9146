"""plugins_trt/tools/ncu_phases.py against sums done by hand on a small Nsight Compute source page."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from plugins_trt.tools import ncu_phases

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["Line No", "Source", "Address", "Source", "Warp Stall Sampling (All Samples)",
          "Warp Stall Sampling (Not-issued Samples)", "# Samples", "Instructions Executed"]


def write_page(path: Path):
    # Two files, as ncu prints them: each CUDA line with its totals, then its SASS instructions
    # (address, text, samples, instructions). The header's lines are inlined into both phases.
    sections = [
        ("/x/common.cuh", [(35, "mma", [(0x130, 5, 100), (0x1c0, 7, 300)])]),
        ("/x/kernel.cu", [(10, "gather", [(0x100, 2, 10), (0x120, 3, 20)]),
                          (20, "mix", [(0x1a0, 11, 40)]),
                          (99, "other", [(0x90, 1, 1)])]),
    ]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        for file, lines in sections:
            w.writerow(["File Path", file])
            w.writerow(["Function Name", "k"])
            w.writerow(HEADER)
            for line, text, sass in lines:
                w.writerow([str(line), text, "-", "-", str(sum(s for _, s, _ in sass)), "0", "0",
                            str(sum(n for _, _, n in sass))])
                for addr, samples, instr in sass:
                    w.writerow(["", "", hex(addr), "  OP", str(samples), "0", str(samples), str(instr)])
                w.writerow(["", "", "...", "...", "-", "-", "-", "-"])


def test_phases_sum_by_address_order(tmp_path):
    page = tmp_path / "page.csv"
    write_page(page)
    sass = ncu_phases.read_sass(str(page))
    assert [a for a, *_ in sass] == sorted([0x90, 0x100, 0x120, 0x130, 0x1a0, 0x1c0])
    out = subprocess.run([sys.executable, str(ROOT / "plugins_trt/tools/ncu_phases.py"), str(page),
                          "--phase", "gather=kernel.cu:5-15", "--phase", "mix=kernel.cu:20-20"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    # Address order: 0x90 (line 99, before any phase), gather 0x100 0x120, the header's 0x130
    # (gather's), mix 0x1a0, the header's 0x1c0 (mix's).
    assert rows["gather"][1] == "130" and rows["gather"][3] == "10"
    assert rows["mix"][1] == "340" and rows["mix"][3] == "18"
    assert rows["total"][1] == "471" and rows["total"][2] == "29"


def test_page_without_sass_is_refused(tmp_path):
    page = tmp_path / "cuda_only.csv"
    page.write_text('"File Path","/x/kernel.cu"\n"Line No","Source"\n"1","int x;"\n')
    with pytest.raises(SystemExit, match="no SASS rows"):
        ncu_phases.read_sass(str(page))


def test_function_lines_finds_the_definition_not_calls():
    text = (
        "__device__ int helper(int x);  // a declaration: helper(\n"   # 1
        "__device__ int helper(int x) {\n"                              # 2
        "    if (x) { return 1; }  // a brace in a comment: {\n"        # 3
        "    return 0;\n"                                               # 4
        "}\n"                                                           # 5
        "__global__ void kernel(int* p,\n"                              # 6
        "                       int n) {\n"                             # 7
        "    p[0] = helper(n);\n"                                       # 8
        "}\n"                                                           # 9
    )
    assert ncu_phases.function_lines(text, "helper") == (2, 5)
    assert ncu_phases.function_lines(text, "kernel") == (6, 9)
    with pytest.raises(ValueError, match="no definition of missing"):
        ncu_phases.function_lines(text, "missing")


def test_function_phases_on_the_kernel_source():
    # The side-rows kernel's helpers resolve in the real source, each inside the file and in order.
    text = (ncu_phases.CSRC / "dense" / "side_rows.cu").read_text()
    spans = [ncu_phases.function_lines(text, f) for f in ("warp_gather", "warp_odd_mix", "side_rows_kernel")]
    assert all(first < last for first, last in spans)
    assert spans[0][1] < spans[1][0] < spans[1][1] < spans[2][0]
    assert "side_rows_kernel" in text.splitlines()[spans[2][0] - 1]


def test_function_phase_matches_the_line_range(tmp_path):
    # --function resolves a function's body to its lines and sums like the same --phase range.
    page = tmp_path / "page.csv"
    write_page(page)
    source = ["// filler"] * 4 + ["__device__ void gather_rows(int j) {"] + ["    work(j);"] * 10 + ["}"]
    (tmp_path / "kernel.cu").write_text("\n".join(source) + "\n")  # gather_rows: lines 5-16
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "plugins_trt/tools/ncu_phases.py"), str(page), *a],
                                    capture_output=True, text=True, check=True).stdout
    by_function = run("--function", "gather=kernel.cu:gather_rows", "--source-dir", str(tmp_path))
    by_lines = run("--phase", "gather=kernel.cu:5-16")
    assert by_function == by_lines
    # Every instruction after the first gather one is unphased (line 20 is no phase here), so it
    # stays with gather: 10 + 20 + 100 + 40 + 300.
    assert by_function.splitlines()[1].split()[:2] == ["gather", "470"]
