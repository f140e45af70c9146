"""The library entry point on a plain nn.Module, against its own dense math."""
import pytest
import torch
from torch import nn

import fq_export
from fq_export.layer import FrameQuantLinear


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Tiny(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(2))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_quantize_a_plain_module_in_place():
    torch.manual_seed(0)
    model = Tiny()
    reference = Tiny()
    reference.load_state_dict(model.state_dict())
    batches = [torch.randn(8, 64) for _ in range(8)]
    stats = fq_export.quantize(model, fq_export.FrameQuantConfig(bits=4, redundancy=1.1), batches, finetune_steps=10)
    assert [s.name for s in stats] == ["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"]
    assert all(isinstance(model.get_submodule(s.name), FrameQuantLinear) for s in stats)
    assert type(model.head) is nn.Linear  # outside the blocks
    x = torch.randn(16, 64)
    with torch.no_grad():
        # the quantized model equals the reference model with each weight replaced by its W_hat
        for s in stats:
            layer = model.get_submodule(s.name)
            parent, child = s.name.rsplit(".", 1)
            dense = reference.get_submodule(parent).get_submodule(child)
            full = dense.weight.clone()
            dense.weight.copy_(layer.dense_weight().float())
            dense.bias.copy_(layer.bias)
            assert (dense.weight - full).norm() / full.norm() < 0.15  # 4 bits
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)


def test_quantize_refuses_what_it_cannot_find():
    with pytest.raises(ValueError, match="no list of blocks"):
        fq_export.quantize(nn.Linear(4, 4), None, [torch.randn(2, 4)])
    with pytest.raises(TypeError):
        fq_export.quantize("model", None, [])
