"""The spread decode kernel's shared-memory bounds hold for every frame the exporter can choose.

``make_plan`` in plugins_trt/csrc/layer/frame_linear_split.cu sizes its shared buffers from bounds on (a)
the rotation chunks under the frame runs of one column group of the codes and (b) the frame runs
under one output rotation chunk, without reading the frame tables; the kernel stops with a trap if
a bound is ever exceeded. This test computes the true counts from fq_export's frames for model
dimensions and redundancies and checks them against the same bound formulas (CPU only).
"""
from __future__ import annotations

import math

import pytest

from fq_export.frames import choose_frame, get_frame
from fq_export.packing import words_per_row
from fq_export.rotations import split_dimension

FOLD_TERMS = 32  # kFoldTerms
MAX_GROUPS = 32  # kMaxGroups
CHUNK_CODES = {2: 128, 4: 128, 8: 64}  # kChunkWords * kCodesPerWord of CodeLayout<BITS>
CHUNK_WORDS = {2: 8, 4: 16, 8: 16}


def chunk_len(d: int) -> int:
    power, odd = split_dimension(d)
    n_hi = min(power, FOLD_TERMS)
    return (power // n_hi) * odd


def input_side(d: int, redundancy: float, bits: int) -> tuple[int, int]:
    """(largest number of rotation chunks under one column group, the plan's bound)."""
    spec = choose_frame(d, redundancy)
    frame = get_frame(spec.k, spec.rho, spec.d)
    k, rho_c, K = frame.k, frame.rho_c, spec.num_vectors
    length = chunk_len(d)
    nchunks = math.ceil(words_per_row(K, bits) / CHUNK_WORDS[bits])
    cpb = math.ceil(nchunks / MAX_GROUPS)
    cols_b = cpb * CHUNK_CODES[bits]
    max_runs_in = math.ceil(cols_b / (2 * k)) + 1
    bound = math.ceil(2 * max_runs_in * k / length) + 1
    worst = 0
    for col0 in range(0, K, cols_b):
        ncols = min(K - col0, cols_b)
        q0, q1 = col0 // (2 * k), min(rho_c, math.ceil((col0 + ncols) / (2 * k)))
        assert q1 - q0 <= max_runs_in
        used = [int(frame.gather_index[e]) for e in range(q0 * k, q1 * k) if frame.gather_weight[e] != 0]
        lo, hi = min(used), max(used)
        worst = max(worst, (2 * hi + 1) // length - (2 * lo) // length + 1)
    return worst, bound


def output_side(d: int, redundancy: float) -> tuple[int, int]:
    """(largest number of frame runs under one output rotation chunk, the plan's bound)."""
    spec = choose_frame(d, redundancy)
    frame = get_frame(spec.k, spec.rho, spec.d)
    k, rho_c, d_c = frame.k, frame.rho_c, frame.d_c
    length = chunk_len(d)
    adv = max(1, d_c // rho_c - 2)
    bound = min(rho_c, math.ceil(length / 2) // adv + 3)
    bins, weights = frame.synth_bin, frame.synth_weight
    worst = 0
    for e0 in range(0, d, length):
        j_first, j_last = e0 // 2, (e0 + length - 1) // 2
        q_lo = int(bins[0, j_first]) // k
        q_hi = int(bins[0, j_last]) // k
        if weights[1, j_last] != 0:
            q_hi = max(q_hi, int(bins[1, j_last]) // k)
        # every bin the chunk gathers lies in runs [q_lo, q_hi]
        for j in range(j_first, j_last + 1):
            for s in (0, 1):
                if weights[s, j] != 0:
                    assert q_lo <= int(bins[s, j]) // k <= q_hi
        worst = max(worst, q_hi - q_lo + 1)
    return worst, bound


DIMS = [384, 576, 768, 1024, 1536, 2048, 3072, 4096, 5120, 11008, 130]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("redundancy", [1.0, 1.1, 1.25, 1.5, 2.0, 3.0])
def test_split_plan_bounds_hold(d, redundancy):
    for bits in (2, 4, 8):
        worst, bound = input_side(d, redundancy, bits)
        assert worst <= bound, f"d={d} r={redundancy} bits={bits}: {worst} input chunks > bound {bound}"
    worst, bound = output_side(d, redundancy)
    assert worst <= bound, f"d={d} r={redundancy}: {worst} output runs > bound {bound}"
