"""Group-wise grids, block-wise fine-tuning, the bit budget and the packaged corpora."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from fq_export import budget, finetune, packing
from fq_export.config import QuantConfig
from fq_export.gptq import gptq_quantize
from fq_export.grid import RowGrid
from fq_export.layer import quantize_linear


def reference_group_gptq(w, h, bits, group, damp=0.01):
    """GPTQ with dynamic groups in float64 from the explicit inverse Hessian (no Cholesky, no
    blocks): each group's min/max grid is fitted from the columns as earlier errors left them."""
    w, h = w.clone().double(), h.clone().double()
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    codes = torch.zeros_like(w)
    scales, zeros = [], []
    maxq = 2**bits - 1
    for q in range(w.shape[1]):
        if q % group == 0:
            part = w[:, q:q + group]
            lo = part.min(1, keepdim=True).values.clamp(max=0)
            hi = part.max(1, keepdim=True).values.clamp(min=0)
            scale = ((hi - lo) / maxq).half().double()
            zero = torch.round(-lo / scale).clamp(0, maxq)
            scales.append(scale)
            zeros.append(zero)
        c = torch.clamp(torch.round(w[:, q:q + 1] / scale) + zero, 0, maxq)
        codes[:, q] = c[:, 0]
        err = (w[:, q] - (scale * (c - zero))[:, 0]) / hinv[q, q]
        w[:, q:] -= err[:, None] * hinv[q, q:][None, :]
        hinv = hinv - torch.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return codes, torch.cat(scales, 1), torch.cat(zeros, 1)


def _problem(rows=16, cols=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(400, cols, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, cols, dtype=torch.float64)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    w[:, :8] *= 6  # one group with much larger weights: where groups pay
    return w, x.T @ x / x.shape[0]


def test_group_gptq_matches_reference_and_beats_per_row():
    w, h = _problem()
    grid = RowGrid.fit(w, 2, group_size=32)
    codes = gptq_quantize(w, h, grid, block_size=64)
    ref_codes, ref_scale, ref_zero = reference_group_gptq(w, h, 2, 32)
    assert grid.scale.shape == (16, 3)
    torch.testing.assert_close(grid.scale.double(), ref_scale, rtol=1e-3, atol=1e-6)
    assert (codes.double() == ref_codes).float().mean() > 0.97  # float32 vs float64 rounding ties
    loss = lambda d: float(torch.trace((w - d) @ h @ (w - d).T) / torch.trace(w @ h @ w.T))
    row_grid = RowGrid.fit(w, 2)
    per_row = row_grid.dequantize(gptq_quantize(w, h, row_grid).double())
    assert loss(grid.dequantize(codes.double())) < 0.7 * loss(per_row)


def test_group_options_are_checked():
    with pytest.raises(ValueError, match="group size"):
        QuantConfig(group_size=48)
    with pytest.raises(ValueError, match="activation order"):
        QuantConfig(group_size=64, act_order=True)


@pytest.mark.parametrize("method", ["framequant", "gptq", "rtn"])
def test_grouped_layer_stores_and_counts_its_groups(method):
    w, h = _problem(rows=48, cols=200)
    config = QuantConfig(method=method, group_size=64, redundancy=1.1)
    layer, stats = quantize_linear(w.float(), None, h, config, "l")
    k_out, k_in = layer.frame_shape
    groups = -(-k_in // 64)
    assert layer.scale.shape == (k_out, groups) and layer.metadata()["group_size"] == 64
    assert layer.code_bits == layer.packed_codes.numel() * 32 + 32 * k_out * groups
    # D_hat from the stored pieces, expanded by hand, and W_hat = P_out D_hat P_in^T
    codes = packing.unpack_codes(layer.packed_codes, 2, k_in).double()
    expand = lambda t: t.double().repeat_interleave(64, 1)[:, :k_in]
    d_hat = expand(layer.scale) * (codes - expand(layer.zero))
    w_hat = torch.from_numpy(layer.out_basis.dense()) @ d_hat @ torch.from_numpy(layer.in_basis.dense()).T
    torch.testing.assert_close(layer.dense_weight(), w_hat, rtol=0, atol=1e-5)
    x = torch.randn(3, 200)
    torch.testing.assert_close(layer(x).double(), x.double() @ w_hat.T, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("group_size", [None, 32])
def test_finetune_lowers_block_error_and_keeps_codes(group_size, dense):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    inputs = [((torch.randn(4, 10, 64),), {}) for _ in range(8)]
    with torch.no_grad():
        targets = [block(*a) for a, _ in inputs]
        for i in (0, 2):
            lin = block[i]
            xs = torch.cat([a[0].reshape(-1, lin.in_features) for a, _ in inputs]) if i == 0 else \
                torch.cat([block[1](block[0](a[0])).reshape(-1, 128) for a, _ in inputs])
            layer, _ = quantize_linear(lin.weight, lin.bias, (xs.T @ xs / len(xs)).double(),
                                       QuantConfig(method="framequant", group_size=group_size), f"b{i}")
            block[i] = layer
    codes = [block[i].packed_codes.clone() for i in (0, 2)]
    before, after = finetune.finetune_block(block, inputs, targets, steps=60, batches_per_step=4, dense=dense)
    assert after < 0.95 * before
    for i, c in zip((0, 2), codes):
        assert torch.equal(block[i].packed_codes, c)
        assert block[i]._dense_w is None or not block[i]._dense_w.requires_grad
    with torch.no_grad():  # the stored (fp16) grid gives the reported error
        err = sum(float((block(*a) - t).pow(2).sum()) for (a, _), t in zip(inputs, targets))
        err /= sum(float(t.pow(2).sum()) for t in targets)
    assert err == pytest.approx(after, rel=1e-3)


@pytest.mark.parametrize("dense", [True, False])
def test_finetune_runs_the_layer_on_its_tuned_grid(dense):
    """Both ways of running a step (dense ``W_hat``, or the five steps) give the layer the tuned
    grid's function, against a float64 reference of ``P_out D_hat P_in^T``."""
    w, h = _problem(rows=40, cols=120)
    layer, _ = quantize_linear(w.float(), torch.randn(40), h, QuantConfig(redundancy=1.1), "t")
    tunable = finetune._Tunable(layer, dense)
    with torch.no_grad():
        for p in tunable.parameters():
            p.normal_(0, 0.05)
        tunable.apply()
        scale, zero, bias = tunable.values()
        d_hat = scale[:, None].double() * (layer.codes().double() - zero.double()[:, None])
        w_hat = torch.from_numpy(layer.out_basis.dense()) @ d_hat @ torch.from_numpy(layer.in_basis.dense()).T
        x = torch.randn(5, 120)
        torch.testing.assert_close(layer(x).double(), x.double() @ w_hat.T + bias.double(), rtol=0, atol=1e-4)


def test_budget_choice_fits_and_is_optimal_on_a_small_table():
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(5)]
    weights = {n: int(rng.integers(1, 5)) * 1000 for n in names}
    table = {}
    for n in names:
        losses = sorted(rng.random(3), reverse=True)
        table[n] = [(QuantConfig(bits=b), bits * weights[n], loss) for b, bits, loss in zip((2, 3, 4), (2.1, 2.6, 4.1), losses)]
    total = sum(weights.values())
    for cap in (2.2, 2.6, 3.0, 3.5):
        chosen = budget.choose(table, weights, cap)
        index = {n: next(i for i, r in enumerate(table[n]) if r[0] is chosen[n]) for n in names}
        used = sum(table[n][index[n]][1] for n in names) / total
        assert used <= cap + 1e-9
        got = sum(table[n][index[n]][2] for n in names)
        best = min(sum(table[n][i][2] for n, i in zip(names, combo)) for combo in itertools.product(range(3), repeat=5)
                   if sum(table[n][i][1] for n, i in zip(names, combo)) / total <= cap)
        assert got <= best * 1.25  # the Lagrangian choice: optimal up to its convex-hull gap
    with pytest.raises(ValueError, match="below the cheapest"):
        budget.choose(table, weights, 2.0)


def test_stored_bits_match_a_quantized_layer():
    w, h = _problem(rows=40, cols=120)
    for config in (QuantConfig(bits=2, redundancy=1.1), QuantConfig(bits=4, redundancy=1.0, group_size=32)):
        layer, _ = quantize_linear(w.float(), None, h, config, "x")
        assert budget.stored_bits(config, 120, 40, "x") == layer.code_bits


def test_corpora_splits_are_disjoint_and_clean():
    corpora = pytest.importorskip("calib.corpora")
    for name in corpora.CORPORA:
        try:
            calib, evaluation = corpora.paragraphs(name, "calib"), corpora.paragraphs(name, "eval")
        except corpora.CorpusError as exc:
            pytest.skip(str(exc))
        assert calib and evaluation and not set(calib) & set(evaluation)
        assert not any("Gutenberg" in p for p in calib + evaluation)
    mixed = corpora.mix_sentences("corpus:flatland+docstrings", "calib")
    assert set(mixed[:2]) == {corpora.sentences("flatland", "calib")[0], corpora.sentences("docstrings", "calib")[0]}
    with pytest.raises(corpora.CorpusError, match="unknown corpus"):
        corpora.parse("corpus:nope")
    pairs = corpora.pairs_file("sts-b").read_text(encoding="utf-8").splitlines()
    assert pairs[0] == "sentence1\tsentence2\tscore" and len(pairs) == 1380
    assert all(0 <= float(line.split("\t")[2]) <= 5 for line in pairs[1:])


def test_cuda_kernels_refuse_group_wise_layers():
    from plugins_trt.runtime.layers import KernelLinear

    w, h = _problem(rows=32, cols=64)
    layer, _ = quantize_linear(w.float(), None, h, QuantConfig(group_size=32), "g")
    with pytest.raises(ValueError, match="one scale and zero per row"):
        KernelLinear(layer)


def test_finetune_paths_give_the_same_gradients():
    """The dense step and the five-step step are one function of the offsets: same gradients."""
    w, h = _problem(rows=40, cols=120)
    layer, _ = quantize_linear(w.float(), torch.randn(40), h, QuantConfig(redundancy=1.1), "t")
    x = torch.randn(6, 120)
    grads = []
    for dense in (True, False):
        tunable = finetune._Tunable(copy.deepcopy(layer), dense)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for p in tunable.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        tunable.apply()
        (tunable.layer(x) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in tunable.parameters()])
    for a, b in zip(*grads):  # float32 sums in another order
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_default_finetune_steps_follow_device_and_model_size():
    from types import SimpleNamespace

    from fq_export import pipeline

    def adapter(width: int, blocks: int):
        return SimpleNamespace(blocks=[(f"b{i}", nn.Sequential(nn.Linear(width, width, bias=False)))
                                       for i in range(blocks)])

    small = adapter(64, 2)  # 8k weights
    big = SimpleNamespace(blocks=small.blocks * (pipeline.CPU_FINETUNE_MAX_WEIGHTS // (2 * 64 * 64) + 1))
    assert pipeline.default_finetune_steps("cpu", small) == pipeline.CPU_FINETUNE_STEPS
    assert pipeline.default_finetune_steps("cpu", big) == 0
    assert pipeline.default_finetune_steps("cpu") == 0
    assert pipeline.default_finetune_steps("cuda", big) == pipeline.DEFAULT_FINETUNE_STEPS


def _quantized_mlp(width: int, inputs, seed: int) -> nn.Module:
    """A residual MLP block whose two linears are FrameQuant r 1.1 at 2 bits, Hessians from ``inputs``."""
    torch.manual_seed(seed)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

        def forward(self, x, scale=1.0):
            return x + scale * self.mlp(x)

    block = Residual()
    with torch.no_grad():
        for i in (0, 2):
            lin = block.mlp[i]
            xs = torch.cat([a[0].reshape(-1, width) for a, _ in inputs])
            xs = xs if i == 0 else block.mlp[1](block.mlp[0](xs))
            block.mlp[i], _ = quantize_linear(lin.weight, lin.bias, (xs.T @ xs / len(xs)).double(),
                                              QuantConfig(redundancy=1.1), f"m{i}")
    return block


def test_stack_joins_batches_that_agree_and_refuses_the_rest():
    a = ((torch.randn(1, 5, 4), None), {"pos": (torch.ones(1, 5, 2), torch.arange(5)), "flag": False})
    b = ((torch.randn(1, 5, 4), None), {"pos": (torch.zeros(1, 5, 2), torch.arange(5)), "flag": False})
    args, kwargs = finetune._stack([a, b])
    assert torch.equal(args[0], torch.cat([a[0][0], b[0][0]])) and args[1] is None
    assert torch.equal(kwargs["pos"][0], torch.cat([torch.ones(1, 5, 2), torch.zeros(1, 5, 2)]))
    assert torch.equal(kwargs["pos"][1], torch.arange(5)) and kwargs["flag"] is False
    shorter = ((torch.randn(1, 4, 4), None), a[1])
    other_positions = (a[0], {**a[1], "pos": (a[1]["pos"][0], torch.arange(1, 6))})
    other_flag = (a[0], {**a[1], "flag": True})
    for odd in (shorter, other_positions, other_flag):
        assert finetune._stack([a, odd]) is None


@pytest.mark.parametrize("equal_lengths", [True, False])
def test_finetune_chain_lowers_the_end_to_end_error(equal_lengths):
    """Two quantized blocks tuned together: the chain's output error falls, the codes stay, and
    the reported error is the stored grids' own, recomputed batch by batch in float64."""
    width = 48
    gen = torch.Generator().manual_seed(0)
    inputs = [((torch.randn(1, 6 if equal_lengths else 3 + i % 4, width, generator=gen),), {"scale": 0.5})
              for i in range(12)]
    blocks = [_quantized_mlp(width, inputs, seed) for seed in (1, 2)]
    fp = [copy.deepcopy(b) for b in blocks]
    with torch.no_grad():
        for b in fp:  # the full-precision reference: each layer's own W_hat plus a known shift
            for m in b.modules():
                if isinstance(m, finetune.FrameQuantLinear):
                    m.bias = m.bias + 0.05
        targets = [fp[1](fp[0](a[0], **k), **k) for a, k in inputs]
    codes = [m.packed_codes.clone() for b in blocks for m in b.modules() if isinstance(m, finetune.FrameQuantLinear)]
    before, after = finetune.finetune_chain(blocks, inputs, targets, steps=80, batches_per_step=4, lr=1e-2)
    assert after < 0.5 * before
    assert all(torch.equal(c, m.packed_codes) for c, m in
               zip(codes, [m for b in blocks for m in b.modules() if isinstance(m, finetune.FrameQuantLinear)]))
    with torch.no_grad():
        outs = [blocks[1](blocks[0](a[0], **k), **k).double() for a, k in inputs]
    err = sum(float((o - t.double()).pow(2).sum()) for o, t in zip(outs, targets))
    err /= sum(float(t.double().pow(2).sum()) for t in targets)
    assert err == pytest.approx(after, rel=1e-3)


def test_next_token_kl_matches_the_definition():
    torch.manual_seed(0)
    head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 30))
    out, target = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    kl, tokens = finetune.next_token_kl(head)(out, target)
    with torch.no_grad():
        p = torch.softmax(head(target).double(), -1)
        q = torch.softmax(head(out).double(), -1)
    want = float((p * (p.log() - q.log())).sum())
    assert float(tokens) == 14
    assert float(kl.detach()) == pytest.approx(want, rel=1e-4)
    zero, _ = finetune.next_token_kl(head)(target, target)
    assert abs(float(zero.detach())) < 1e-4


def _tiny_llama(hidden=64, seed=0):
    """A two-block Llama with random weights (transformers), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def _adapter(model):
    from fq_export.models.base import ModelAdapter

    return ModelAdapter("tiny", "causal_lm", model, [(f"model.layers.{i}", b) for i, b in enumerate(model.model.layers)], {})


def _token_batches(count):
    return [{"input_ids": torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(i))} for i in range(count)]


def test_output_head_turns_the_last_block_output_into_logits():
    from fq_export.models.base import ModelAdapter

    model = _tiny_llama(hidden=32)
    adapter = _adapter(model)
    seen = []
    model.model.layers[-1].register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        logits = adapter.forward({"input_ids": ids})
        torch.testing.assert_close(adapter.output_head()(seen[0]), logits, rtol=0, atol=1e-5)
    assert ModelAdapter("enc", "encoder", model, [], {}).output_head() is None


def test_quantize_with_end_to_end_steps_brings_a_causal_lm_closer():
    """A tiny Llama through the pipeline: the end-to-end pass (next-token KL) lowers the KL of the
    quantized model's next-token distribution to the full-precision one on the calibration batches."""
    from fq_export.pipeline import quantize

    fp = _tiny_llama()
    batches = _token_batches(16)
    kls = []
    for e2e in (0, 60):
        model = copy.deepcopy(fp)
        quantize(_adapter(model), QuantConfig(bits=2), batches, progress=False, finetune_steps=0, e2e_steps=e2e)
        with torch.no_grad():
            kl = 0.0
            for b in batches:
                p = torch.log_softmax(fp(**b).logits.double(), -1)
                q = torch.log_softmax(model(**b).logits.double(), -1)
                kl += float((p.exp() * (p - q)).sum())
        kls.append(kl)
    assert kls[1] < 0.9 * kls[0]
    # The pass tuned the blocks' norm weights (not the final norm, which the teacher shares).
    tuned = finetune.tuned_parameters(model)
    assert sorted(tuned) == sorted(f"model.layers.{i}.{n}.weight" for i in range(2)
                                   for n in ("input_layernorm", "post_attention_layernorm"))
    fp_params = dict(fp.named_parameters())
    assert all(not torch.equal(value, fp_params[name]) for name, value in tuned.items())
    assert torch.equal(model.model.norm.weight, fp.model.norm.weight)
    # tune_norms=False: the same pass leaves every norm as it was.
    model = copy.deepcopy(fp)
    quantize(_adapter(model), QuantConfig(bits=2), batches, progress=False, e2e_steps=10, tune_norms=False)
    assert finetune.tuned_parameters(model) == {}
    assert all(torch.equal(p, fp_params[n]) for n, p in model.named_parameters() if "norm" in n)


def test_checkpoint_carries_tuned_norms_and_reproduces_the_model(tmp_path):
    """A tiny Llama quantized with the end-to-end pass, saved and loaded into a fresh
    full-precision copy, gives the same logits as the model in memory; a changed parameter byte
    is refused by name."""
    from safetensors.torch import load_file, save_file
    from fq_export.checkpoint import CheckpointError, load_checkpoint, load_parameters, save_checkpoint
    from fq_export.pipeline import apply_layers, apply_parameters, quantize, quantized_layers

    fp = _tiny_llama()
    model = copy.deepcopy(fp)
    batches = _token_batches(8)
    quantize(_adapter(model), QuantConfig(bits=2), batches, progress=False, e2e_steps=30)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, quantized_layers(model), {"model": {"model": "tiny"}}, params=finetune.tuned_parameters(model))
    fresh = copy.deepcopy(fp)
    adapter = _adapter(fresh)
    layers, meta = load_checkpoint(path)
    params = load_parameters(path)
    assert meta["format_version"] == 3 and len(params) == 4
    apply_layers(adapter, layers)
    apply_parameters(adapter, params)
    with torch.no_grad():
        for b in batches[:3]:
            torch.testing.assert_close(fresh(**b).logits, model(**b).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        apply_parameters(adapter, {"model.layers.9.input_layernorm.weight": torch.ones(64)})
    with pytest.raises(ValueError, match="has shape"):
        apply_parameters(adapter, {"model.layers.0.input_layernorm.weight": torch.ones(3)})
    tensors = load_file(str(path))
    name = "model.layers.1.input_layernorm.weight"
    tensors[name] = tensors[name].clone()
    tensors[name][0] += 1.0
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"parameter {name} does not match its sha256"):
        load_parameters(bad)
    with pytest.raises(CheckpointError, match=f"parameter {name}"):
        load_checkpoint(bad)


def test_end_to_end_tuning_that_ends_worse_restores_the_norms():
    """A step size that makes the loss diverge: grids and norm weights go back to where they
    started, and nothing is marked as tuned."""
    from fq_export.pipeline import capture_block_inputs, first_output, quantize

    fp = _tiny_llama()
    model = copy.deepcopy(fp)
    adapter = _adapter(model)
    batches = _token_batches(4)
    inputs = capture_block_inputs(_adapter(fp), fp.model.layers[0], batches)
    targets = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = args
            for block in fp.model.layers:
                out = (first_output(block(*out, **kwargs)),) + tuple(out[1:])
            targets.append(out[0])
    quantize(adapter, QuantConfig(bits=2), batches, progress=False)
    blocks = list(model.model.layers)
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "layernorm" in n}
    scales = [m.scale.clone() for m in model.modules() if hasattr(m, "packed_codes")]
    before, after = finetune.finetune_chain(blocks, inputs, targets, 5, lr=1e3, head=adapter.output_head())
    assert after == before
    assert all(torch.equal(p, norms[n]) for n, p in model.named_parameters() if "layernorm" in n)
    assert all(torch.equal(m.scale, s) for m, s in zip([m for m in model.modules() if hasattr(m, "packed_codes")], scales))
    assert finetune.tuned_parameters(model) == {}


class _ResidualToy(nn.Module):
    """Two blocks: ``h = x + 1e-3 * a(x)``, then ``out = b(h)``. Layer ``a`` barely reaches the
    output; ``b``'s weights lie near a 2-bit grid, so its own relative proxy loss is the smaller."""

    def __init__(self, width=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([nn.ModuleDict({"a": nn.Linear(width, width)}),
                                     nn.ModuleDict({"b": nn.Linear(width, width)})])
        with torch.no_grad():
            b = self.blocks[1]["b"].weight
            b.copy_(0.125 * torch.randint(-2, 2, b.shape) + 0.01 * torch.randn(b.shape))

    def forward(self, x):
        h = x + 1e-3 * self.blocks[0]["a"](x)
        return self.blocks[1]["b"](h)


def _toy_adapter():
    from fq_export.models.base import ModelAdapter

    model = _ResidualToy().eval()
    return ModelAdapter("toy", "vit", model, [("blocks.0", model.blocks[0]), ("blocks.1", model.blocks[1])], {},
                        chained=False)


def test_output_error_matches_its_definitions():
    gen = torch.Generator().manual_seed(0)
    ref, out = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen)
    enc = type("A", (), {"family": "encoder"})()
    lm = type("A", (), {"family": "causal_lm"})()
    assert budget.output_error(enc, ref, out) == pytest.approx(float(((out - ref) ** 2).sum()), rel=1e-6)
    p = np.exp(ref.double().numpy())
    p /= p.sum(-1, keepdims=True)
    q = np.exp(out.double().numpy())
    q /= q.sum(-1, keepdims=True)
    assert budget.output_error(lm, ref, out) == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-5)
    assert budget.output_error(lm, ref, ref) == pytest.approx(0.0, abs=1e-5)


def test_budget_weighs_layers_by_their_effect_on_the_output():
    """Each layer's 2-bit loss is the output error with that layer alone quantized (measured here
    independently), its 4-bit loss keeps the proxy ratio, and the budget's one 4-bit upgrade goes
    to the layer that reaches the output, not to the one whose own relative error is larger
    (GPTQ without rotations, so that ``b`` stays near its grid)."""
    from fq_export.pipeline import collect_hessians

    adapter = _toy_adapter()
    gen = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(8, 64, generator=gen)} for _ in range(6)]
    config = QuantConfig(method="gptq", bits=2)
    table = budget.sensitivities(adapter, config, batches, progress=False)
    hessians = collect_hessians(adapter, batches)
    x = torch.cat([b["pixel_values"] for b in batches])
    proxies = {}
    with torch.no_grad():
        reference = adapter.model(x)
        for name in ("blocks.0.a", "blocks.1.b"):
            linear = adapter.model.get_submodule(name)
            losses = {c.bits: loss for c, _, loss in table[name]}
            stats = {}
            for bits in (2, 4):
                layer, stats[bits] = quantize_linear(linear.weight, linear.bias, hessians[name].hessian,
                                                     QuantConfig(method="gptq", bits=bits), name)
                if bits == 2:
                    w_hat = layer.dense_weight().float()
            if name == "blocks.0.a":
                out = adapter.model.blocks[1]["b"](x + 1e-3 * (x @ w_hat.T + linear.bias))
            else:
                out = (x + 1e-3 * adapter.model.blocks[0]["a"](x)) @ w_hat.T + linear.bias
            assert losses[2] == pytest.approx(float(((out - reference) ** 2).sum()), rel=1e-3)
            assert losses[4] / losses[2] == pytest.approx(stats[4].frame_proxy_loss / stats[2].frame_proxy_loss, rel=1e-9)
            proxies[name] = [(c, b, stats[c.bits].frame_proxy_loss) for c, b, _ in table[name]]
    bits = {n: {c.bits: b for c, b, _ in rows} for n, rows in table.items()}
    room = (bits["blocks.0.a"][2] + bits["blocks.1.b"][4]) / (2 * 64 * 64)
    weights = {"blocks.0.a": 64 * 64, "blocks.1.b": 64 * 64}
    chosen = budget.choose(table, weights, room)
    assert chosen["blocks.1.b"].bits == 4 and chosen["blocks.0.a"].bits == 2
    by_proxy = budget.choose(proxies, weights, room)  # the layers' own relative errors pick the other way
    assert by_proxy["blocks.0.a"].bits == 4 and by_proxy["blocks.1.b"].bits == 2


def test_probe_batches_stack_only_where_shapes_agree(monkeypatch):
    monkeypatch.setattr(budget, "PROBE_STACK", 3)
    win = lambda v: {"input_ids": torch.full((1, 4), v)}  # noqa: E731
    batches = [win(0), win(1), win(2), win(3), {"input_ids": torch.zeros(1, 5, dtype=torch.long)}, win(5)]
    stacked = budget._stacked(batches)
    assert [tuple(b["input_ids"].shape) for b in stacked] == [(3, 4), (1, 4), (1, 5), (1, 4)]
    assert stacked[0]["input_ids"][:, 0].tolist() == [0, 1, 2]
    assert stacked[1] is batches[3]
    loose = [{"a": torch.zeros(2), "b": None}, {"a": torch.ones(2), "b": None}]  # not all tensors: kept apart
    assert [b is a for a, b in zip(loose, budget._stacked(loose))] == [True, True]


def test_default_budget_on_a_cpu_only_for_small_models(monkeypatch):
    adapter = _toy_adapter()
    config = QuantConfig(bits=2)
    fixed = budget.recipe_bits(adapter, config)
    assert budget.default_budget(adapter, config, "cpu") == pytest.approx(fixed)
    monkeypatch.setattr(budget, "DEFAULT_BUDGET_MAX_WEIGHTS", 2 * 64 * 64 - 1)  # the toy holds 2 x 64 x 64
    assert budget.default_budget(adapter, config, "cpu") is None
    assert budget.default_budget(adapter, config, "cuda") == pytest.approx(fixed)
    assert budget.default_budget(adapter, QuantConfig(bits=4), "cuda") is None
    assert budget.default_budget(adapter, QuantConfig(bits=2, group_size=64), "cuda") is None
