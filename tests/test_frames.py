"""Tight fusion frames against dense float64 math."""
import numpy as np
import pytest
import torch

from fq_export.frames import FrameSpec, TightFusionFrame, choose_frame, spectral_tetris, tff_exists

REAL_DIMS = [192, 384, 576, 768, 1024, 1152, 1536, 2048, 3072, 4096, 5120, 11008, 13824]


@pytest.mark.parametrize("rows,cols", [(3, 7), (4, 8), (5, 13), (16, 200), (7, 15)])
def test_spectral_tetris_is_unit_norm_tight(rows, cols):
    f = np.zeros((rows, cols))
    for j, entries in enumerate(spectral_tetris(rows, cols)):
        for i, v in entries:
            f[i, j] = v
    np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(f @ f.T, cols / rows * np.eye(rows), atol=1e-12)


def test_spectral_tetris_rejects_low_redundancy():
    with pytest.raises(ValueError, match="cols >= 2"):
        spectral_tetris(4, 7)


@pytest.mark.parametrize("d", REAL_DIMS)
def test_redundancy_one_exists_for_real_model_dims(d):
    spec = choose_frame(d, 1.0)
    assert spec.redundancy == 1.0 and spec.d == d and tff_exists(spec.k, spec.rho, spec.d)


@pytest.mark.parametrize("d", REAL_DIMS)
@pytest.mark.parametrize("r", [1.05, 1.1, 1.2])
def test_choice_is_at_or_below_request_and_close(d, r):
    spec = choose_frame(d, r)
    assert 1.0 <= spec.redundancy <= r + 1e-12
    assert spec.redundancy > r - 0.02  # the nearest valid value is close for these dims


@pytest.mark.parametrize("d,r", [(24, 1.1), (384, 1.1), (384, 1.0), (768, 1.2), (576, 1.05)])
def test_frame_is_parseval_and_fast_ops_match_dense(d, r):
    frame = TightFusionFrame(choose_frame(d, r))
    t = frame.dense()
    assert t.shape == (d, frame.num_vectors)
    np.testing.assert_allclose(t @ t.T, np.eye(d), atol=1e-13)
    # The k subspaces: each block of rho columns (grouped by subspace l) is orthonormal.
    u = torch.randn(7, d, dtype=torch.float64)
    z = torch.randn(7, frame.num_vectors, dtype=torch.float64)
    dense = torch.from_numpy(t)
    torch.testing.assert_close(frame.analysis(u), u @ dense, atol=1e-12, rtol=0)
    torch.testing.assert_close(frame.synthesis(z), z @ dense.T, atol=1e-12, rtol=0)


def test_fusion_frame_subspaces_are_orthonormal_and_tight():
    spec = choose_frame(96, 1.25)
    frame = TightFusionFrame(spec)
    t = frame.dense()
    k = spec.k
    # Real column 2*(i*k + l) + {0,1} belongs to subspace l.
    subspace = (np.arange(spec.num_vectors) // 2) % k
    projections = np.zeros((96, 96))
    for l in range(k):  # noqa: E741 (the paper's index)
        basis = t[:, subspace == l] * np.sqrt(spec.redundancy)
        np.testing.assert_allclose(basis.T @ basis, np.eye(spec.rho), atol=1e-12)
        projections += basis @ basis.T
    np.testing.assert_allclose(projections, spec.redundancy * np.eye(96), atol=1e-12)


def test_blocks_cover_every_nonzero_and_overlap_by_at_most_four_rows():
    frame = TightFusionFrame(choose_frame(384, 1.1))
    t = frame.dense()
    mask = np.zeros_like(t, dtype=bool)
    for b in frame.blocks:
        mask[b.row_start:b.row_stop, b.col_start:b.col_stop] = True
    assert np.abs(t[~mask]).max() == 0.0
    for a, b in zip(frame.blocks, frame.blocks[1:]):
        assert a.col_stop == b.col_start and 0 <= a.row_stop - b.row_start <= 4


def test_invalid_requests_are_clear():
    with pytest.raises(ValueError, match="even dimension"):
        choose_frame(383, 1.1)
    with pytest.raises(ValueError, match="redundancy"):
        choose_frame(384, 0.9)
    with pytest.raises(ValueError, match="no tight fusion frame"):
        TightFusionFrame(FrameSpec(2, 4, 384))
    assert not tff_exists(3, 5, 16)  # odd rho has no real form


def test_frame_is_deterministic():
    a = TightFusionFrame(choose_frame(768, 1.1)).dense()
    b = TightFusionFrame(choose_frame(768, 1.1)).dense()
    assert np.array_equal(a, b)
