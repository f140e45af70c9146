"""plugins_trt/csrc/packed_layout.h against fq_export.packing, which defines the packed layout.

A small C++ program (g++ alone: the header is plain C++ outside nvcc) reads codes packed by
``pack_codes`` with the header's ``read_code`` (and, for 2, 4 and 8 bits, word by word with
``code_of_word``) and prints ``words_per_row``, ``code_word`` / ``code_shift``, the layout version and
the supported bit widths; each must equal fq_export.packing's ``words_per_row``, ``code_location``,
``unpack_codes``, ``LAYOUT_VERSION`` and ``SUPPORTED_BITS``. Skipped where no C++ compiler is found.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fq_export import packing

CSRC = Path(__file__).resolve().parents[1] / "plugins_trt" / "csrc"
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "packed_layout.h"
namespace p = fq::packed;

// stdin: cases, then per case "rows cols bits" and rows * words_per_row words.
// stdout: per case "wpr W", "loc" + (word, shift) of every column, "codes" + every code by
// read_code, and for whole-word bit widths "words" + every code by code_of_word.
int main() {
    std::printf("version %d group %d bits", p::kLayoutVersion, p::kGroup);
    for (int b = 0; b <= 32; ++b)
        if (p::supported_bits(b)) std::printf(" %d", b);
    std::printf("\n");
    int cases = 0;
    if (std::scanf("%d", &cases) != 1) return 2;
    for (int c = 0; c < cases; ++c) {
        int rows, cols, bits;
        if (std::scanf("%d %d %d", &rows, &cols, &bits) != 3) return 2;
        if (!p::supported_bits(bits)) return 3;
        const int wpr = p::words_per_row(cols, bits);
        std::vector<uint32_t> words(static_cast<size_t>(rows) * wpr);
        for (auto& w : words)
            if (std::scanf("%u", &w) != 1) return 2;
        std::printf("wpr %d\nloc", wpr);
        for (int col = 0; col < cols; ++col) std::printf(" %d %d", p::code_word(col, bits), p::code_shift(col, bits));
        std::printf("\ncodes");
        for (int r = 0; r < rows; ++r)
            for (int col = 0; col < cols; ++col) std::printf(" %u", p::read_code(&words[static_cast<size_t>(r) * wpr], col, bits));
        std::printf("\n");
        if (p::whole_word_bits(bits)) {
            std::printf("words");
            const int per = p::codes_per_word(bits);
            for (int r = 0; r < rows; ++r)
                for (int col = 0; col < cols; ++col)
                    std::printf(" %u", p::code_of_word(words[static_cast<size_t>(r) * wpr + col / per], col % per, bits));
            std::printf("\n");
        }
    }
    return 0;
}
"""

CASES = [(3, 1, 2), (2, 31, 3), (4, 32, 3), (3, 33, 4), (2, 64, 8), (5, 100, 2), (2, 130, 3), (3, 77, 8), (1, 4500, 2)]


@pytest.mark.skipif(CXX is None, reason="no C++ compiler found")
def test_header_matches_fq_export_packing(tmp_path):
    src, exe = tmp_path / "layout.cpp", tmp_path / "layout"
    src.write_text(PROGRAM)
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    gen = torch.Generator().manual_seed(0)
    codes = {case: torch.randint(0, 2 ** case[2], case[:2], generator=gen) for case in CASES}
    # The largest code everywhere in one case, so that every bit of a straddling code is read.
    codes[(2, 31, 3)][1] = 7
    lines = [str(len(CASES))]
    for (rows, cols, bits), c in codes.items():
        packed = packing.pack_codes(c, bits)
        assert torch.equal(packing.unpack_codes(packed, bits, cols), c)
        lines.append(f"{rows} {cols} {bits}")
        lines.append(" ".join(str(int(w) & 0xFFFFFFFF) for w in packed.flatten()))
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = iter(run.stdout.splitlines())
    assert next(out).split() == ["version", str(packing.LAYOUT_VERSION), "group", str(packing.GROUP), "bits",
                                 *map(str, packing.SUPPORTED_BITS)]
    for (rows, cols, bits), c in codes.items():
        key, wpr = next(out).split()
        assert key == "wpr" and int(wpr) == packing.words_per_row(cols, bits), (rows, cols, bits)
        loc = [int(v) for v in next(out).split()[1:]]
        assert [(loc[2 * i], loc[2 * i + 1]) for i in range(cols)] == [packing.code_location(i, bits) for i in range(cols)]
        decoded = torch.tensor([int(v) for v in next(out).split()[1:]]).view(rows, cols)
        assert torch.equal(decoded, packing.unpack_codes(packing.pack_codes(c, bits), bits, cols)), (rows, cols, bits)
        if bits in (2, 4, 8):
            by_word = torch.tensor([int(v) for v in next(out).split()[1:]]).view(rows, cols)
            assert torch.equal(by_word, c), (rows, cols, bits)
