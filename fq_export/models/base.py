"""What every model family provides to the quantization pipeline, export and evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class UnknownModelError(ValueError):
    """The model name or path cannot be resolved to something fq-export can load."""


@dataclass
class ModelAdapter:
    """A loaded model plus what the pipeline needs to know about it.

    ``blocks``: ordered ``(prefix, module)`` pairs quantized first to last; every ``nn.Linear``
    inside a block is quantized (embeddings, patch embedding and heads are outside blocks).
    ``chained``: each block's output is the next block's first input (BERT, Llama, ViT), so
    calibration activations flow block to block; otherwise (Swin, whose stages downsample
    between blocks) each block's inputs are captured by a fresh pass through the model.
    ``source``: how to load the same model again (stored in checkpoints).
    """

    name: str
    family: str  # "encoder" | "causal_lm" | "vit"
    model: nn.Module
    blocks: list[tuple[str, nn.Module]]
    source: dict
    tokenizer: object = None
    chained: bool = True
    max_length: int = 512
    extra: dict = field(default_factory=dict)

    def forward(self, batch: dict) -> torch.Tensor:
        """The model's task output for a batch: sentence embeddings, LM logits or class logits."""
        if self.family == "encoder":
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch.get("token_type_ids"))
            return mean_pool(out.last_hidden_state, batch["attention_mask"])
        if self.family == "causal_lm":
            return self.model(input_ids=batch["input_ids"], use_cache=False).logits
        return self.model(batch["pixel_values"])

    def output_head(self) -> nn.Module | None:
        """A causal LM's modules after its last block (final norm, output layer), from the last
        block's output to next-token logits; ``None`` for other families and unknown layouts."""
        if self.family != "causal_lm":
            return None
        norm = getattr(getattr(self.model, "model", None), "norm", None)  # Llama-like
        out = self.model.get_output_embeddings()
        return nn.Sequential(norm, out) if isinstance(norm, nn.Module) and isinstance(out, nn.Module) else None

    def linear_names(self) -> list[str]:
        names = []
        for prefix, block in self.blocks:
            for sub, module in block.named_modules():
                if isinstance(module, nn.Linear):
                    names.append(f"{prefix}.{sub}")
        return names

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: masked mean over tokens, then L2 normalization."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
