"""ONNX export: both forms against dense float64 math, onnx's reference evaluator and PyTorch."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from converters import rewrite, validate
from converters.subgraphs import pack_signs
from fq_export import packing, plugin_ops
from fq_export.basis import SideRecipe
from fq_export.frames import choose_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import RotationSpec, random_signs


def random_layer(n, m, bits, redundancy=1.1, rotate=True, frames=True, bias=True, seed=0, group_size=None):
    gen = torch.Generator().manual_seed(seed)
    ins = SideRecipe(n, RotationSpec(n, 11 + seed) if rotate else None, choose_frame(n, redundancy) if frames else None)
    outs = SideRecipe(m, RotationSpec(m, 12 + seed) if rotate else None, choose_frame(m, redundancy) if frames else None)
    codes = torch.randint(0, 2**bits, (outs.size, ins.size), generator=gen)
    groups = 1 if group_size is None else -(-ins.size // group_size)
    scale = (torch.rand(outs.size, groups, generator=gen) * 0.1 + 0.01).half()
    zero = (torch.rand(outs.size, groups, generator=gen) * (2**bits - 1)).half()
    b = torch.randn(m, generator=gen) if bias else None
    return FrameQuantLinear(ins, outs, bits, packing.pack_codes(codes, bits), scale, zero, b, group_size=group_size)


def dense_reference(layer: FrameQuantLinear, x: np.ndarray) -> np.ndarray:
    """``x W_hat^T + b`` with ``W_hat = P_out D_hat P_in^T`` from dense float64 matrices."""
    codes = packing.unpack_codes(layer.packed_codes, layer.bits, layer.in_recipe.size).double().numpy()
    rows, cols = codes.shape
    span = layer.group_size or cols  # columns that share one scale and zero
    per_column = lambda t: np.repeat(t.double().numpy().reshape(rows, -1), span, axis=1)[:, :cols]
    d = per_column(layer.scale) * (codes - per_column(layer.zero))
    w = layer.out_basis.dense() @ d @ layer.in_basis.dense().T
    y = x.astype(np.float64) @ w.T
    return y + layer.bias.double().numpy() if layer.bias is not None else y


class Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return torch.tanh(self.proj(x))


def export_tiny(layer, x, tmp_path, form, accuracy_level=4):
    """Export ``tanh(layer(x))`` and rewrite it; returns the rewritten model path."""
    from converters.torch_export import dense_copy

    model = Holder(layer)
    dense, layers = dense_copy(model)
    path = tmp_path / "fp32.onnx"
    dynamic = {"x": {0: "batch"}, "y": {0: "batch"}} if x.dim() == 2 else {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    torch.onnx.export(dense, (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes=dynamic,
                      opset_version=18, dynamo=False)
    out, sizes = rewrite.rewrite_graph(onnx.load(str(path)), layers, form, accuracy_level)
    out = rewrite.check_model(out)
    target = tmp_path / f"{form}.onnx"
    rewrite.save_model(out, target)
    return target, sizes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(192, 384), (384, 192)])
def test_standard_form_matches_dense_math(tmp_path, bits, shape):
    n, m = shape
    layer = random_layer(n, m, bits, seed=bits)
    x = torch.randn(2, 5, n)
    path, _ = export_tiny(layer, x, tmp_path, "standard")
    ref = np.tanh(dense_reference(layer, x.numpy()))
    sess = validate.make_session(path, "standard")
    for batch, seq in ((2, 5), (3, 7)):  # dynamic batch and sequence
        xs = np.random.default_rng(batch).standard_normal((batch, seq, n)).astype(np.float32)
        got = sess.run(["y"], {"x": xs})[0]
        np.testing.assert_allclose(got, np.tanh(dense_reference(layer, xs)), atol=2e-4, rtol=0)
    # onnx's own reference evaluator runs the same graph: an independent check of the operator use.
    got = ReferenceEvaluator(str(path)).run(["y"], {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("rotate,frames", [(True, True), (True, False), (False, False)])
def test_plugin_form_runs_in_onnxruntime(tmp_path, rotate, frames):
    layer = random_layer(384, 192, 2, rotate=rotate, frames=frames)
    x = torch.randn(4, 384)  # 2-D input: the exporter emits Gemm
    path, _ = export_tiny(layer, x, tmp_path, "plugin")
    model = onnx.load(str(path))
    custom = [n for n in model.graph.node if n.domain == plugin_ops.ONNX_DOMAIN]
    assert {n.op_type for n in custom} == ({plugin_ops.MATMUL_OP} | ({plugin_ops.ROTATION_OP} if rotate else set())
                                           | ({plugin_ops.FRAME_OP} if frames else set()))
    for node in custom:  # what TensorRT's parser needs to find the creator
        attrs = {a.name: a for a in node.attribute}
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
        assert attrs["plugin_namespace"].type == onnx.AttributeProto.STRING
        assert set(plugin_ops.ATTRIBUTES[node.op_type]) <= set(attrs)
    got = validate.make_session(path, "plugin").run(["y"], {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, np.tanh(dense_reference(layer, x.numpy())), atol=2e-4, rtol=0)


@pytest.mark.parametrize("rotate,frames,bias", [(True, True, True), (True, False, False), (False, True, True),
                                                (False, False, True)])
def test_plugin_layer_form_runs_in_onnxruntime(tmp_path, rotate, frames, bias):
    # One FQFrameLinear node per layer, the bias inside it: what TensorRT engines take by default.
    layer = random_layer(384, 192, 2, rotate=rotate, frames=frames, bias=bias, seed=3)
    x = torch.randn(2, 5, 384)
    path, _ = export_tiny(layer, x, tmp_path, "plugin-layer")
    model = onnx.load(str(path))
    custom = [n for n in model.graph.node if n.domain == plugin_ops.ONNX_DOMAIN]
    assert [n.op_type for n in custom] == [plugin_ops.LAYER_OP]
    assert not [n for n in model.graph.node if n.op_type == "Add"], "the bias belongs inside the node"
    attrs = {a.name: a for a in custom[0].attribute}
    assert attrs["plugin_version"].s == b"1" and attrs["plugin_namespace"].type == onnx.AttributeProto.STRING
    assert set(plugin_ops.ATTRIBUTES[plugin_ops.LAYER_OP]) <= set(attrs)
    assert attrs["frame_in_k"].i * attrs["frame_in_rho"].i == (layer.in_recipe.size if frames else 0)
    assert attrs["rotate_out"].i == int(rotate) and attrs["in_dim"].i == 384 and attrs["out_dim"].i == 192
    sess = validate.make_session(path, "plugin-layer")
    for xs in (x.numpy(), np.random.default_rng(0).standard_normal((3, 7, 384)).astype(np.float32)):
        got = sess.run(["y"], {"x": xs})[0]
        np.testing.assert_allclose(got, np.tanh(dense_reference(layer, xs)), atol=2e-4, rtol=0)


def test_plugin_layer_op_refuses_bad_attributes():
    from converters import ort_ops

    layer = random_layer(192, 192, 2)
    attrs = plugin_ops.layer_attributes(layer)
    args = (layer.packed_codes.numpy(), layer.scale.float().numpy(), layer.zero.float().numpy())
    with pytest.raises(ValueError, match="both be 0"):
        ort_ops.layer_from_attributes({**attrs, "frame_in_rho": 0}, *args, layer.bias.numpy())
    with pytest.raises(ValueError, match="bias has 5 values"):
        ort_ops.layer_from_attributes(attrs, *args, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="packed codes"):
        ort_ops.layer_from_attributes({**attrs, "bits": 3}, *args, layer.bias.numpy())
    with pytest.raises(ValueError, match="last axis"):
        ort_ops.frame_linear(np.zeros((2, 100), np.float32), *args, layer.bias.numpy(), **attrs)


def test_packed_codes_stay_packed(tmp_path):
    layer = random_layer(384, 384, 2)
    layer.zero.copy_(layer.zero.float().round().half())  # the packed form's MatMulNBits takes integer zeros
    packed_bytes = layer.packed_codes.numpy().view(np.uint8).reshape(-1)
    for form in ("standard", "packed", "plugin", "plugin-layer"):
        path, sizes = export_tiny(layer, torch.randn(3, 384), tmp_path, form)
        model = onnx.load(str(path))
        floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                  and int(np.prod(i.dims)) >= 384 * 384 // 4]
        assert not floats, f"{form}: a dense float weight is in the file: {[f.name for f in floats]}"
        # The packed layout's bytes, as int32 words (plugin forms) or read as bytes (standard, packed).
        held = [onnx.numpy_helper.to_array(i).view(np.uint8).reshape(-1) for i in model.graph.initializer
                if i.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.UINT8) and int(np.prod(i.dims)) * (
                    4 if i.data_type == onnx.TensorProto.INT32 else 1) == packed_bytes.size]
        assert len(held) == 1, form
        np.testing.assert_array_equal(held[0], packed_bytes)


def test_standard_form_folds_to_the_dense_graph(tmp_path):
    # At session start onnxruntime folds every layer's reconstruction: what runs is the fp32 graph
    # (the same MatMul and Add nodes), with W_hat^T as an initializer equal to the dense reference.
    import onnxruntime as ort

    layer = random_layer(192, 384, 2, seed=3)
    layer.zero.copy_(layer.zero.float().round().half())
    path, _ = export_tiny(layer, torch.randn(2, 5, 192), tmp_path, "standard")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    ops = sorted(n.op_type for n in folded.graph.node)
    assert ops.count("MatMul") == 1 and "Einsum" not in ops and "Gather" not in ops, ops
    weights = [onnx.numpy_helper.to_array(i) for i in folded.graph.initializer if tuple(i.dims) == (192, 384)]
    dense = (layer.out_basis.dense() @ (layer.scale.double()[:, None] * (layer.codes().double() - layer.zero.double()[
        :, None])).numpy() @ layer.in_basis.dense().T)
    assert len(weights) == 1
    np.testing.assert_allclose(weights[0], dense.T, atol=2e-5 * np.abs(dense).max())


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_standard_form_in_onnx_reference_evaluator(tmp_path, bits):
    # onnx's own reference evaluator runs the reconstruction as written (Einsum, byte table, frames).
    layer = random_layer(64, 96, bits, seed=bits)
    if bits != 3:
        layer.zero.copy_(layer.zero.float().round().half())
    path, _ = export_tiny(layer, torch.randn(4, 64), tmp_path, "standard")
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    got = ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.tanh(dense_reference(layer, x)), atol=2e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(192, 384), (384, 192)])
def test_packed_form_matches_dense_math(tmp_path, bits, shape):
    n, m = shape
    layer = random_layer(n, m, bits, seed=bits)
    layer.zero.copy_(layer.zero.float().round().half())
    from converters.torch_export import dense_copy

    dense, layers = dense_copy(Holder(layer))
    torch.onnx.export(dense, (torch.randn(2, 5, n),), str(tmp_path / "fp32.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=18, dynamo=False,
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    xs = np.random.default_rng(1).standard_normal((3, 7, n)).astype(np.float32) * 0.02
    want = np.tanh(dense_reference(layer, xs))
    for level in (0, 4):  # level 4 rounds the frame coefficients to int8 inside the op
        model, _ = rewrite.rewrite_graph(onnx.load(str(tmp_path / "fp32.onnx")), layers, "packed", level)
        assert sum(nd.op_type == "MatMulNBits" for nd in model.graph.node) == 1
        rewrite.save_model(rewrite.check_model(model), tmp_path / "packed.onnx")
        got = validate.make_session(tmp_path / "packed.onnx", "packed").run(["y"], {"x": xs})[0]
        if level == 0:
            np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
        else:
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_packed_form_refuses_what_matmulnbits_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="--onnx-form standard"):
        export_tiny(random_layer(192, 192, 3), torch.randn(2, 192), tmp_path, "packed")


@pytest.mark.parametrize("form", ["standard", "packed"])
@pytest.mark.parametrize("bits,group_size,integer_zeros", [(2, 32, True), (2, 128, False), (4, 64, True),
                                                          (3, 32, False), (2, None, False)])
def test_group_wise_and_fractional_grids_match_dense_math(tmp_path, form, bits, group_size, integer_zeros):
    # 384 * 1.1 -> 420 frame columns: the last group of 128 (and of 64) is short.
    if form == "packed" and bits == 3:
        pytest.skip("MatMulNBits takes 2, 4 and 8 bits")
    layer = random_layer(384, 192, bits, seed=bits, group_size=group_size)
    if integer_zeros:
        layer.set_grid(layer.scale, layer.zero.float().round())
    path, _ = export_tiny(layer, torch.randn(2, 384), tmp_path, form, accuracy_level=0)
    xs = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    got = validate.make_session(path, form).run(["y"], {"x": xs})[0]
    np.testing.assert_allclose(got, np.tanh(dense_reference(layer, xs)), atol=2e-4)
    np.testing.assert_allclose(layer.dense_weight().numpy(),
                               (dense_reference(layer, np.eye(384)) - layer.bias.double().numpy()).T, atol=1e-6)


def test_plugin_forms_refuse_group_wise_layers(tmp_path):
    layer = random_layer(192, 192, 2, group_size=64)
    for form in ("plugin", "plugin-layer"):
        with pytest.raises(ValueError, match="group-wise scales"):
            export_tiny(layer, torch.randn(2, 192), tmp_path, form)


def test_sign_bits_decode():
    signs = random_signs(99, 1000)
    words = pack_signs(signs).astype(np.int64) % 2**32
    bits = (words[np.arange(1000) // 32] >> (np.arange(1000) % 32)) & 1
    np.testing.assert_array_equal(1 - 2 * bits, signs)


class Chain(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("form", ["standard", "plugin", "plugin-layer"])
def test_equal_biases_deduplicated_by_the_exporter(tmp_path, form):
    # Freshly initialised models (the random-weight ViT, Swin) have all-zero biases; torch's exporter
    # keeps one initializer and feeds the others through Identity nodes. The bias must still be found.
    first, second = random_layer(192, 192, 2, seed=1), random_layer(192, 192, 3, seed=2)
    first.bias.zero_()
    second.bias.zero_()
    from converters.torch_export import dense_copy

    dense, layers = dense_copy(Chain(first, second))
    x = torch.randn(2, 3, 192)
    path = tmp_path / "fp32.onnx"
    torch.onnx.export(dense, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=18, dynamo=False,
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node), "no deduplicated initializer"
    out = rewrite.check_model(rewrite.rewrite_graph(onnx.load(str(path)), layers, form)[0])
    rewrite.save_model(out, tmp_path / "q.onnx")
    got = validate.make_session(tmp_path / "q.onnx", form).run(["y"], {"x": x.numpy()})[0]
    want = dense_reference(second, np.tanh(dense_reference(first, x.numpy())))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


def test_unmatched_layer_is_an_error(tmp_path):
    layer = random_layer(192, 192, 2)
    x = torch.randn(2, 192)
    from converters.torch_export import dense_copy

    dense, layers = dense_copy(Holder(layer))
    path = tmp_path / "m.onnx"
    torch.onnx.export(dense, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=18, dynamo=False)
    other = {"elsewhere.proj": random_layer(192, 192, 2, seed=5)}
    with pytest.raises(rewrite.ConversionError, match="elsewhere.proj"):
        rewrite.rewrite_graph(onnx.load(str(path)), other, "standard")


# ---- a small real model, end to end -------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_quantized():
    from calib.sources import calibration_batches
    from fq_export.config import QuantConfig
    from fq_export.models import load_model
    from fq_export.pipeline import quantize

    adapter = load_model("minilm")
    batches, _ = calibration_batches(adapter, None, 6)
    quantize(adapter, QuantConfig(method="framequant", bits=2, redundancy=1.1), batches, progress=False)
    return adapter


def test_minilm_both_forms_against_pytorch(minilm_quantized, tmp_path):
    from converters.export import export_artifacts
    from fq_export.cli.export import validation_batches

    adapter = minilm_quantized
    batches, _ = validation_batches(adapter, 8)
    paths = {f: tmp_path / f"{f}.onnx" for f in ("standard", "packed", "plugin")}
    report = export_artifacts(adapter, ["standard", "packed", "plugin"], paths, batches[0], batches)
    for form, entry in report["artifacts"].items():
        assert entry["passed"], (form, entry)
        if form == "packed":  # int8 frame coefficients inside MatMulNBits (accuracy level 4)
            assert entry["cosine"] > 0.999 and entry["task_agreement"] > 0.999
        else:
            assert entry["max_abs_err"] < 1e-4 and entry["cosine"] > 0.9999 and entry["task_agreement"] > 0.9999
        size = entry["size"]
        assert size["codes_within_budget"]
        assert size["quantized_layers_codes_scales_bytes"] <= size["effective_bits"] / 32 * size["quantized_layers_fp32_bytes"] + 1
        assert entry["bytes"] < report["fp32_onnx"]["bytes"]
    # The validation itself can fail: perturb one layer's scales in the file and it must be caught and named.
    model = onnx.load(str(paths["standard"]))
    victim = "encoder.layer.3.attention.self.value"
    init = next(i for i in model.graph.initializer if i.name.startswith(f"{victim}/scale"))
    values = onnx.numpy_helper.to_array(init) * np.float16(3.0)
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save_model(model, str(paths["standard"]))
    figures = validate.compare(adapter, validate.make_session(paths["standard"], "standard"), batches)
    assert not figures["passed"]
    from converters.torch_export import export_onnx

    layers = export_onnx(adapter, batches[0], tmp_path / "fp32.onnx")
    _, sizes = rewrite.rewrite_graph(onnx.load(str(tmp_path / "fp32.onnx")), layers, "standard")
    worst = validate.layer_blame(adapter, paths["standard"], "standard", sizes["io"], batches[0])
    assert worst[0]["layer"] == victim and worst[0]["rel_err"] > 0.1


def test_cli_plan_without_tensorrt(tmp_path, capsys):
    from fq_export.cli import main

    out = tmp_path / "engine.plan"
    code = main(["--model", "minilm", "--method", "rtn", "--calib-samples", "2", "--validate-samples", "2",
                 "--out", str(out), "--report", str(tmp_path / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3 and not out.exists()
    assert (tmp_path / "engine.plugin.onnx").exists() and "trtexec --onnx=" in err and "--dynamicPlugins=" in err
    ops = [n.op_type for n in onnx.load(str(tmp_path / "engine.plugin.onnx")).graph.node]
    # Engines take one FQFrameLinear node per quantized layer (MiniLM: 36 linears).
    assert ops.count(plugin_ops.LAYER_OP) == 36 and plugin_ops.MATMUL_OP not in ops
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["engine"]["built"] is False
    assert {"max_abs_err", "cosine", "task_agreement", "effective_bits", "bytes"} <= set(report)


def test_cli_rejects_bad_output_name(tmp_path, capsys):
    from fq_export.cli import main

    assert main(["--model", "minilm", "--out", str(tmp_path / "x.txt")]) == 2
    assert ".onnx or .plan" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_causal_lm_exports_with_dynamic_sequence(tmp_path):
    # A tiny random Llama through the same wrapper as SmolLM2: transformers' mask code must export
    # (no torch.diff packed-sequence probe) and the graph must serve other batch and sequence sizes.
    from transformers import LlamaConfig, LlamaForCausalLM

    from converters.torch_export import CausalLogits

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    module = CausalLogits(LlamaForCausalLM(config).eval()).eval()
    ids = torch.randint(0, 128, (1, 5))
    path = tmp_path / "llama.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (ids,), str(path), input_names=["input_ids"], output_names=["output"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "output": {0: "b", 1: "s"}},
                          opset_version=18, dynamo=False)
    sess = validate.make_session(path, "standard")
    for shape in ((1, 5), (3, 11)):
        x = torch.randint(0, 128, shape)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"input_ids": x.numpy()})[0], want, atol=1e-4, rtol=0)


def test_save_model_leaves_no_temporaries(tmp_path, monkeypatch):
    """``save_model`` writes through a uniquely named temporary: a failed write leaves nothing,
    a good one leaves only the file, readable by onnx and with the umask's mode."""
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    target = tmp_path / "m.onnx"

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(onnx, "save_model", broken)
        with pytest.raises(OSError):
            rewrite.save_model(model, target)
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o027)
    try:
        size = rewrite.save_model(model, target)
    finally:
        os.umask(old)
    assert list(tmp_path.iterdir()) == [target] and size == target.stat().st_size
    assert (target.stat().st_mode & 0o777) == 0o640
    assert onnx.load(str(target)).graph.node[0].op_type == "Identity"
