"""Quantized embedding tables: the quantizers against numpy, the rewritten Gathers against PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from converters import embeddings, rewrite


def test_int8_rows_and_int4_blocks_against_numpy():
    w = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
    values, q, scale = embeddings.quantize_table(w, "int8")
    s = (np.abs(w).max(1) / 127).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(q, np.round(w / s[:, None]).astype(np.int8))
    np.testing.assert_allclose(values, q * s[:, None], rtol=0, atol=0)
    assert np.abs(values - w).max() <= s.max() / 2 + 1e-6
    values, packed, scale = embeddings.quantize_table(w, "int4")
    assert packed.shape == (100, 32) and scale.shape == (100, 2)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(100, 2, 32).astype(np.float32) - 8
    np.testing.assert_allclose(values, (codes * scale.astype(np.float32)[..., None]).reshape(100, 64), rtol=0, atol=0)
    assert np.abs(values - w).max() <= scale.astype(np.float32).max() / 2 + 1e-6
    with pytest.raises(ValueError, match="hidden size"):
        embeddings.quantize_table(w[:, :60], "int4")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(300, 64)
        self.positions = nn.Embedding(80, 64)
        self.types = nn.Embedding(2, 64)  # too small to quantize

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        return torch.tanh(self.tokens(ids) + self.positions(pos) + self.types(torch.zeros_like(ids)))


@pytest.mark.parametrize("mode", ["fp16", "int8", "int4"])
def test_gathers_dequantize_like_pytorch(tmp_path, mode):
    torch.manual_seed(0)
    model = Tiny()
    tables = embeddings.quantize_embeddings(model, mode)
    assert [t.name for t in tables] == ["tokens", "positions"]
    ids = torch.randint(0, 300, (3, 11))
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (ids,), str(path), input_names=["ids"], output_names=["y"], opset_version=18,
                      dynamo=False, dynamic_axes={"ids": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    out, stored = embeddings.rewrite_gathers(onnx.load(str(path)), tables)
    out = rewrite.check_model(out)
    assert set(stored) == {"tokens", "positions"}
    big = [i for i in out.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) >= 80 * 64]
    assert not big, "a float table is still in the file"
    other = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        want = model(other).numpy()
    got = ReferenceEvaluator(out).run(None, {"ids": other.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    import onnxruntime as ort

    rewrite.save_model(out, tmp_path / "q.onnx")
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"ids": other.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="embeddings mode"):
        embeddings.quantize_embeddings(Tiny(), "int3")
