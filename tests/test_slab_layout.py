"""Host check of the side-columns kernel's shared-memory layout (plugins_trt/csrc/dense/slab_layout.cuh).

A small C++ program includes the header itself (no copy of cslot) and checks, for every power of two
up to 65536 points, that cslot permutes each aligned group of 8 points, that it is linear (the kernel
XORs precomputed slots of disjoint bit fields), and that every 8-row access of the kernel touches 8
distinct 16-byte bank groups. The access patterns are written out again here from the kernel's
lane-to-row formulas, as an independent statement of them; oslot (sides with an odd factor) must
permute the points into planes. Needs a C++ compiler only (no GPU, no nvcc).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "plugins_trt" / "csrc"
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "dense/slab_layout.cuh"
using fq::cslot;

static int failures = 0;
static void expect(bool ok, const char* what, int d, int a, int b) {
    if (!ok && failures++ < 10) std::printf("FAIL %s d=%d %d %d\n", what, d, a, b);
}
// 8 rows in 8 distinct bank groups (16-byte slot mod 8).
static bool distinct(const int (&rows)[8]) {
    int seen = 0;
    for (int r : rows) seen |= 1 << (cslot(r) & 7);
    return seen == 0xff;
}

int main() {
    for (int log2n = 5; log2n <= 16; ++log2n) {
        const int d = 1 << log2n;
        std::vector<char> hit(d, 0);
        for (int p = 0; p < d; ++p) {
            const int s = cslot(p);
            expect(s >> 3 == p >> 3, "slot leaves its group of 8", d, p, s);
            expect(s >= 0 && s < d && !hit[s], "not a permutation", d, p, s);
            if (s >= 0 && s < d) hit[s] = 1;
        }
        for (int a = 0; a < d; a += 37)
            for (int b = 0; b < d; b += 53) expect(cslot(a ^ b) == (cslot(a) ^ cslot(b)), "not linear", d, a, b);
        // Radix-16 passes (lo = 0, 4, ...): pair i = groups 2i, 2i + 1; lanes 0-15 read rows e of the
        // first group, 16-31 of the second, in pieces of 8 lanes; results go back to the same rows.
        for (int lo = 0; lo + 4 <= log2n; lo += 4) {
            const int second = lo ? 1 : 16;
            for (int gi = 0; gi < d / 16; gi += 2) {
                const int base = ((gi >> lo) << (lo + 4)) | (gi & ((1 << lo) - 1));
                for (int piece = 0; piece < 4; ++piece) {
                    int rows[8];
                    for (int i = 0; i < 8; ++i) {
                        const int lane = 8 * piece + i;
                        rows[i] = base + (lane >> 4) * second + ((lane & 15) << lo);
                    }
                    expect(distinct(rows), "Walsh-Hadamard piece", d, lo, gi);
                }
                // The 32-bit-store form (sm_80): rows g and g + 8 of each group, 8 g per instruction.
                for (int u = 0; u < 2; ++u)
                    for (int hi = 0; hi < 2; ++hi) {
                        int rows[8];
                        for (int g = 0; g < 8; ++g) rows[g] = (base + u * second) ^ ((g + 8 * hi) << lo);
                        expect(distinct(rows), "Walsh-Hadamard 32-bit stores", d, lo, gi);
                    }
            }
        }
        // Gather: 8 consecutive lanes store rows 2j (then 2j + 1) for 8 consecutive j.
        for (int j0 = 0; j0 < d / 2; j0 += 8)
            for (int h = 0; h < 2; ++h) {
                int rows[8];
                for (int i = 0; i < 8; ++i) rows[i] = 2 * (j0 + i) + h;
                expect(distinct(rows), "gather stores", d, j0, h);
            }
        // Output: piece m of the transposing ldmatrix, rows base + 8 (i / 2) + 2 m + i % 2.
        for (int base = 0; base < d; base += 32)
            for (int m = 0; m < 4; ++m) {
                int rows[8];
                for (int i = 0; i < 8; ++i) rows[i] = base + 8 * (i >> 1) + 2 * m + (i & 1);
                expect(distinct(rows), "output loads", d, base, m);
            }
    }
    // With an odd factor: oslot(p) = plane (p mod odd) at (p mod odd) * power, cslot(p / odd) inside
    // it; a permutation of the d points whose planes hold every point of one residue.
    for (int odd : {3, 5, 43})
        for (int power = 32; power * odd <= 65536 * 3; power *= 2) {
            const int d = power * odd;
            std::vector<char> hit(d, 0);
            for (int p = 0; p < d; ++p) {
                const int s = fq::oslot(p, power, odd);
                expect(s >= 0 && s < d && !hit[s], "oslot not a permutation", d, p, s);
                expect(s / power == p % odd && s % power == cslot(p / odd), "oslot plane", d, p, s);
                if (s >= 0 && s < d) hit[s] = 1;
            }
        }
    std::printf(failures ? "%d failures\n" : "ok\n", failures);
    return failures ? 1 : 0;
}
"""


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_slab_layout_is_a_conflict_free_permutation(tmp_path):
    src = tmp_path / "check_slab_layout.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / "check_slab_layout"
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Werror", f"-I{CSRC}", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
