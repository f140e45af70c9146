"""The quantized layer: five-step forward against the dense reconstruction from dense P."""
import numpy as np
import pytest
import torch

from fq_export import packing
from fq_export.basis import SideBasis
from fq_export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fq_export.config import QuantConfig
from fq_export.layer import FrameQuantLinear, LinearJob, quantize_linear, quantize_linears, relative_output_error

CONFIGS = [
    QuantConfig(method="rtn"),
    QuantConfig(method="gptq"),
    QuantConfig(method="quip"),
    QuantConfig(method="quip-clip"),
    QuantConfig(method="framequant", redundancy=1.0),
    QuantConfig(method="framequant", redundancy=1.1),
    QuantConfig(method="framequant", redundancy=1.2, redundancy_side="input", bits=3),
]


def problem(m=96, n=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=gen) / n**0.5
    x = torch.randn(512, n, generator=gen) @ (torch.eye(n) + 0.3 * torch.randn(n, n, generator=gen) / n**0.5)
    h = (x.double().T @ x.double()) / 512
    return w, torch.randn(m, generator=gen), x, h


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
def test_forward_matches_dense_reconstruction(config):
    w, b, x, h = problem()
    layer, stats = quantize_linear(w, b, h, config, "blk.fc")
    # Independent reference: dense P from dense frame and rotation matrices.
    p_in, p_out = SideBasis(layer.in_recipe).dense(), SideBasis(layer.out_recipe).dense()
    np.testing.assert_allclose(p_in @ p_in.T, np.eye(128), atol=1e-12)
    d_hat = layer.dequantized_codes().double().numpy()
    w_hat = p_out @ d_hat @ p_in.T
    np.testing.assert_allclose(layer.dense_weight().numpy(), w_hat, atol=1e-10)
    y = layer(x[:16])
    ref = x[:16].double() @ torch.from_numpy(w_hat).T + b.double()
    # float32 path through rotations and frames: error relative to the output scale.
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    k_out, k_in = layer.frame_shape
    expected_bits = (k_out * packing.words_per_row(k_in, config.bits) * 32 + 32 * k_out) / (96 * 128)
    assert stats.effective_bits == pytest.approx(expected_bits)


def test_methods_rank_as_expected_on_correlated_inputs():
    w, b, x, h = problem(128, 256, seed=3)
    errors = {}
    for config in (QuantConfig(method="rtn"), QuantConfig(method="gptq"), QuantConfig(method="framequant", redundancy=1.1)):
        layer, _ = quantize_linear(w, b, h, config, "l")
        errors[config.method] = relative_output_error(w, layer.dense_weight(), h)
    assert errors["framequant"] < errors["gptq"] < errors["rtn"]


def test_layer_state_holds_only_codes_scales_bias():
    w, b, _, h = problem()
    layer, _ = quantize_linear(w, b, h, QuantConfig(), "l")
    assert set(layer.state_dict()) == {"packed_codes", "scale", "zero", "bias"}
    assert layer.packed_codes.dtype == torch.int32 and layer.scale.dtype == torch.float16


def test_checkpoint_roundtrip_is_bit_identical(tmp_path):
    w, b, x, h = problem()
    layer, _ = quantize_linear(w, b, h, QuantConfig(redundancy=1.1), "enc.0.fc")
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"enc.0.fc": layer}, {"model": {"model": "toy"}})
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == {"model": "toy"}
    assert torch.equal(loaded["enc.0.fc"](x), layer(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not an fq-export checkpoint"):
        load_checkpoint(plain)
    # A layer whose codes do not fit its recipe.
    w, b, _, h = problem()
    layer, _ = quantize_linear(w, b, h, QuantConfig(), "fc")
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"fc": layer})
    from safetensors.torch import load_file

    import json
    from safetensors import safe_open

    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as handle:
        meta = handle.metadata()
    tensors["fc.packed_codes"] = tensors["fc.packed_codes"][:, :-1].contiguous()
    save_file(tensors, str(good), metadata=meta)
    with pytest.raises(CheckpointError, match="does not match its recipe"):
        load_checkpoint(good)
    assert json.loads(meta["fq_export"])["layers"]["fc"]["bits"] == 2


def test_layer_rejects_unknown_layout_version():
    w, b, _, h = problem()
    layer, _ = quantize_linear(w, b, h, QuantConfig(method="rtn"), "fc")
    with pytest.raises(ValueError, match="layout version"):
        FrameQuantLinear(layer.in_recipe, layer.out_recipe, 2, layer.packed_codes, layer.scale, layer.zero, None,
                         layout_version=99)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        QuantConfig(method="awq")
    with pytest.raises(ValueError, match="bits"):
        QuantConfig(bits=5)
    with pytest.raises(ValueError, match="redundancy"):
        QuantConfig(redundancy=0.5)
    assert QuantConfig.from_dict(QuantConfig(redundancy=1.2).to_dict()) == QuantConfig(redundancy=1.2)


@pytest.mark.parametrize("dim, rotate, r", [(384, True, 1.1), (640, True, 1.1), (256, False, 1.1), (384, True, None)])
def test_dense_tensor_matches_the_float64_basis(dim, rotate, r):
    """``SideBasis.dense_tensor`` (float32, built where the layer lives) is the float64 ``P``."""
    from fq_export.basis import SideRecipe

    basis = SideBasis(SideRecipe.make(dim, rotate, r, 11))
    reference = basis.dense()
    got = basis.dense_tensor("cpu")
    assert got.dtype == torch.float32 and tuple(got.shape) == reference.shape
    np.testing.assert_allclose(got.double().numpy(), reference, rtol=0, atol=1e-6)


def test_quantize_linears_batches_same_shapes_and_matches_one_by_one(monkeypatch):
    import fq_export.layer as layer_module

    calls = []
    original = layer_module.gptq_quantize_many

    def counting(weights, *args, **kwargs):
        calls.append(len(weights))
        return original(weights, *args, **kwargs)

    jobs = []
    for k, (m, n) in enumerate([(96, 128), (64, 128), (96, 128), (64, 128), (96, 128)]):
        w, b, _, h = problem(m, n, seed=k)
        config = QuantConfig(method="framequant", redundancy=1.1, bits=2 if k < 4 else 4)
        jobs.append(LinearJob(f"layer{k}", w, b, h, config))
    alone = [quantize_linear(j.weight, j.bias, j.hessian, j.config, j.name) for j in jobs]
    monkeypatch.setattr(layer_module, "gptq_quantize_many", counting)
    quantize_linears([jobs[0], jobs[2]])  # same shape, but CPU tensors go one by one unless asked
    assert calls == [1, 1]
    calls.clear()
    together = quantize_linears(jobs, batch=True)
    assert sorted(calls) == [1, 2, 2]  # (96x128, 2 bits) x2, (64x128, 2 bits) x2, (96x128, 4 bits)
    for (a, sa), (b, sb), job in zip(alone, together, jobs):
        assert sb.name == job.name and b.bits == job.config.bits
        assert (a.codes() == b.codes()).double().mean() > 0.99
        assert sb.frame_proxy_loss == pytest.approx(sa.frame_proxy_loss, rel=1e-3)
        x = torch.randn(4, job.weight.shape[1])
        dense = x.double() @ b.dense_weight().T + job.bias.double()
        torch.testing.assert_close(b(x).double(), dense, rtol=1e-4, atol=1e-4)
