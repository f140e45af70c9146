"""GPTQ and the grid against plain float64 references."""
import pytest
import torch

from fq_export.gptq import HessianAccumulator, gptq_quantize, gptq_quantize_many
from fq_export.grid import RowGrid, clip_rows


def reference_gptq(w, h, grid, damp):
    """Optimal Brain Surgeon column order: explicit inverse-Hessian downdates, float64."""
    w = w.clone().double()
    h = h.clone().double()
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    codes = torch.zeros_like(w)
    scale, zero = grid.scale.double(), grid.zero.double()
    for q in range(w.shape[1]):
        c = torch.clamp(torch.round(w[:, q:q + 1] / scale) + zero, 0, grid.maxq)
        codes[:, q] = c[:, 0]
        err = (w[:, q] - (scale * (c - zero))[:, 0]) / hinv[q, q]
        w[:, q:] -= err[:, None] * hinv[q, q:][None, :]
        hinv = hinv - torch.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return codes


def test_hessian_accumulates_in_float64():
    acc = HessianAccumulator(4)
    x = torch.randn(3, 10, 4)
    acc.add_batch(x[:1])
    acc.add_batch(x[1:])
    flat = x.reshape(-1, 4).double()
    torch.testing.assert_close(acc.hessian, flat.T @ flat / 30)
    with pytest.raises(ValueError, match="last axis"):
        acc.add_batch(torch.zeros(2, 5))


@pytest.mark.parametrize("block_size", [128, 7])
def test_gptq_matches_obs_reference(block_size):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    x = torch.randn(200, 40, generator=gen, dtype=torch.float64) @ torch.randn(40, 40, generator=gen, dtype=torch.float64)
    h = x.T @ x / 200
    grid = RowGrid.fit(w, 3)
    codes = gptq_quantize(w, h, grid, block_size=block_size, damp=0.01)
    ref = reference_gptq(w, h, grid, 0.01)
    agree = (codes.double() == ref).double().mean()
    assert agree > 0.99  # float32 vs float64 may flip a rare tie


def test_gptq_beats_round_to_nearest_on_the_proxy_loss():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=gen, dtype=torch.float64)
    x = torch.randn(512, 64, generator=gen, dtype=torch.float64) @ torch.randn(64, 64, generator=gen, dtype=torch.float64)
    h = x.T @ x / 512
    grid = RowGrid.fit(w, 2)
    loss = lambda q: torch.trace((w - q) @ h @ (w - q).T)  # noqa: E731
    assert loss(grid.dequantize(gptq_quantize(w, h, grid).double())) < 0.8 * loss(grid.quantize(w))


def test_grid_is_asymmetric_with_fp16_scale():
    w = torch.tensor([[-1.0, 0.0, 2.0, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    grid = RowGrid.fit(w, 2)
    assert torch.equal(grid.scale, grid.scale.half().double())
    codes = grid.codes(w)
    assert codes.min() >= 0 and codes.max() <= 3
    # Row 0 spans [-1, 2] on 4 levels: step 1, zero at code 1.
    assert grid.zero[0, 0] == 1 and torch.equal(codes[0], torch.tensor([0.0, 1.0, 3.0, 2.0], dtype=torch.float64))
    # Round-to-nearest error is at most half a step inside the range.
    inside = (w >= -1) & (w <= 2)
    assert ((grid.quantize(w) - w).abs()[0][inside[0]] <= grid.scale[0, 0] / 2 + 1e-12).all()


def test_clip_rows_against_numpy_statistics():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5, 1000, generator=gen, dtype=torch.float64)
    w[0, 0] = 50.0
    clipped = clip_rows(w, 2.0)
    wn = w.numpy()
    hi = wn.mean(1) + 2 * wn.std(1)
    lo = wn.mean(1) - 2 * wn.std(1)
    assert (clipped.numpy() <= hi[:, None] + 1e-12).all() and (clipped.numpy() >= lo[:, None] - 1e-12).all()
    assert clip_rows(w, None) is w


def _problems(count, rows=16, cols=40, seed=3):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * (1 + k)
        x = torch.randn(300, cols, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2 + k, cols, dtype=torch.float64)
        h = x.T @ x / 300
        if k == 1:
            h[5, :] = h[:, 5] = 0  # a dead input column
        out.append((w, h))
    return out


@pytest.mark.parametrize("block_size", [128, 16])
def test_batched_gptq_solves_each_problem_as_the_reference(block_size):
    problems = _problems(3)
    grids = [RowGrid.fit(w, 2) for w, _ in problems]
    codes = gptq_quantize_many([w for w, _ in problems], [h for _, h in problems], grids, block_size=block_size)
    for (w, h), grid, got in zip(problems, grids, codes):
        alive = torch.diag(h) != 0
        w_ref = w.clone()
        w_ref[:, ~alive] = 0
        h_ref = h.clone()
        h_ref[~alive, ~alive] = 1
        ref = reference_gptq(w_ref, h_ref, grid, 0.01)
        assert got.shape == w.shape
        assert (got.double() == ref).double().mean() > 0.99


def test_batched_gptq_with_activation_order_matches_the_permuted_reference():
    problems = [p for k, p in enumerate(_problems(3)) if k != 1]  # no dead column
    grids = [RowGrid.fit(w, 3) for w, _ in problems]
    codes = gptq_quantize_many([w for w, _ in problems], [h for _, h in problems], grids, act_order=True)
    for (w, h), grid, got in zip(problems, grids, codes):
        perm = torch.argsort(torch.diag(h), descending=True)
        ref = reference_gptq(w[:, perm], h[perm][:, perm], grid, 0.01)[:, torch.argsort(perm)]
        assert (got.double() == ref).double().mean() > 0.99


def test_batched_gptq_fits_each_problems_own_groups():
    problems = _problems(3, cols=64)
    alone = [RowGrid.fit(w, 2, group_size=32) for w, _ in problems]
    together = [RowGrid.fit(w, 2, group_size=32) for w, _ in problems]
    one_by_one = [gptq_quantize(w, h, g, block_size=64) for (w, h), g in zip(problems, alone)]
    batched = gptq_quantize_many([w for w, _ in problems], [h for _, h in problems], together, block_size=64)
    for a, b, ga, gb in zip(one_by_one, batched, alone, together):
        assert gb.scale.shape == (16, 2)
        torch.testing.assert_close(ga.scale, gb.scale)
        assert (a == b).double().mean() > 0.99
    assert not torch.equal(together[0].scale, together[2].scale)


def test_batched_gptq_rejects_mixed_problems():
    (w, h), = _problems(1)
    with pytest.raises(ValueError, match="share a weight shape"):
        gptq_quantize_many([w, w[:, :20]], [h, h[:20, :20]], [RowGrid.fit(w, 2), RowGrid.fit(w[:, :20], 2)])
    with pytest.raises(ValueError, match="share bits"):
        gptq_quantize_many([w, w], [h, h], [RowGrid.fit(w, 2), RowGrid.fit(w, 3)])
    with pytest.raises(ValueError, match="as many"):
        gptq_quantize_many([w, w], [h], [RowGrid.fit(w, 2)])
