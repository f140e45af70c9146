"""Where a kernel's instructions and stall samples go, by phase of its source, from Nsight Compute.

Reads the CSV of ``ncu --import R.ncu-rep --page source --csv --print-source cuda,sass`` (CUDA lines
with their SASS instructions under them) and sums "Instructions Executed" and "Warp Stall Sampling
(All Samples)" per phase. A phase is a line range of one source file (``--phase NAME=FILE:FIRST-LAST``)
or the bodies of named functions (``--function NAME=FILE:FUNC[+FUNC...]``, found in FILE under
``--source-dir``, default plugins_trt/csrc, so that the phases follow the source as it changes); both
repeatable, the first match wins. An instruction whose innermost line is in no phase (an inlined
helper from a header) is given the phase of the nearest phased instruction before it in address
order, since inlined code sits inside its caller's code. Prints a table; ``--lines N`` also prints
the N hottest lines.

    python plugins_trt/tools/ncu_phases.py cs.csv --phase gather=side_rows.cu:333-385 ...
    python plugins_trt/tools/ncu_phases.py cs.csv --function gather=dense/side_rows.cu:warp_gather ...
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"

INSTR = "Instructions Executed"
SAMPLES = "Warp Stall Sampling (All Samples)"


def read_sass(path: str):
    """[(address, file, line, source text, instructions, samples)] in address order."""
    out = []
    file = None
    line = text = None
    cols = None
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            if row[0] == "File Path":
                file = row[1]
                continue
            if row[0] == "Line No":
                cols = {name: i for i, name in reversed(list(enumerate(row)))}
                continue
            if cols is None or row[0] == "Function Name":
                continue
            if row[0]:  # a CUDA line; its SASS follows
                line, text = int(row[0]), row[1]
                continue
            addr = row[2]
            if not addr.startswith("0x"):
                continue
            num = lambda name: float(row[cols[name]]) if row[cols[name]] not in ("", "-") else 0.0
            out.append((int(addr, 16), file, line, text, num(INSTR), num(SAMPLES)))
    if not out:
        sys.exit(f"{path}: no SASS rows (export with --page source --csv --print-source cuda,sass)")
    out.sort()
    return out


def parse_phase(spec: str):
    name, where = spec.split("=", 1)
    file, span = where.rsplit(":", 1)
    first, last = (int(v) for v in span.split("-"))
    return name, file, first, last


def function_lines(text: str, func: str) -> tuple[int, int]:
    """1-based first and last line of the definition of ``func`` in C++/CUDA source ``text``: the
    first ``func(`` whose parameter list is followed by a body (not ``;``), through its closing brace."""
    code = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), text)  # comments out, offsets kept
    for match in re.finditer(rf"\b{re.escape(func)}\s*\(", code):
        depth, i = 0, match.end() - 1
        while i < len(code):  # the parameter list
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
            if depth == 0:
                break
        rest = code[i:]
        head = re.match(r"[^;{]*", rest).group()
        if not rest[len(head):].startswith("{"):
            continue  # a call or a declaration
        start = i + len(head)
        depth, j = 0, start
        while j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
            if depth == 0:
                return code.count("\n", 0, match.start()) + 1, code.count("\n", 0, j - 1) + 1
    raise ValueError(f"no definition of {func}")


def parse_function(spec: str, source_dir: Path):
    """NAME=FILE:FUNC[+FUNC...] -> [(name, file, first, last)] for each function's body."""
    name, where = spec.split("=", 1)
    file, funcs = where.rsplit(":", 1)
    text = (source_dir / file).read_text()
    out = []
    for func in funcs.split("+"):
        try:
            first, last = function_lines(text, func)
        except ValueError as err:
            sys.exit(f"{source_dir / file}: {err}")
        out.append((name, file, first, last))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--phase", action="append", default=[], help="NAME=FILE:FIRST-LAST (FILE: a path suffix)")
    ap.add_argument("--function", action="append", default=[], help="NAME=FILE:FUNC[+FUNC...] (FILE under --source-dir)")
    ap.add_argument("--source-dir", type=Path, default=CSRC, help="where --function's files are (default: plugins_trt/csrc)")
    ap.add_argument("--lines", type=int, default=0, help="also print the N hottest source lines")
    args = ap.parse_args()
    phases = [parse_phase(p) for p in args.phase]
    for spec in args.function:
        phases += parse_function(spec, args.source_dir)
    sass = read_sass(args.csv)

    def phase_of(file, line):
        for name, suffix, first, last in phases:
            if file.endswith(suffix) and first <= line <= last:
                return name
        return None

    instr, samples = defaultdict(float), defaultdict(float)
    current = "(before any phase)"
    for _addr, file, line, _text, n, s in sass:
        current = phase_of(file, line) or current
        instr[current] += n
        samples[current] += s
    ti, ts = sum(instr.values()), sum(samples.values())
    print(f"{'phase':28s} {'warp instr':>14s} {'instr %':>8s} {'stall samples':>14s} {'samples %':>9s}")
    for name in sorted(instr, key=lambda k: -samples[k]):
        print(f"{name:28s} {instr[name]:14,.0f} {100 * instr[name] / ti:7.1f}% {samples[name]:14,.0f} {100 * samples[name] / ts:8.1f}%")
    print(f"{'total':28s} {ti:14,.0f} {'':8s} {ts:14,.0f}")
    if args.lines:
        by_line = defaultdict(lambda: [0.0, 0.0, ""])
        for _addr, file, line, text, n, s in sass:
            e = by_line[(file.rsplit("/", 1)[-1], line)]
            e[0] += n
            e[1] += s
            e[2] = text.strip()
        print(f"\nhottest {args.lines} lines by stall samples (innermost line; samples %, instr %):")
        for (file, line), (n, s, text) in sorted(by_line.items(), key=lambda kv: -kv[1][1])[: args.lines]:
            print(f"  {100 * s / ts:5.1f} {100 * n / ti:5.1f}  {file}:{line}  {text[:90]}")


if __name__ == "__main__":
    main()
