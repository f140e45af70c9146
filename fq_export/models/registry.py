"""Model names users type, and how each resolves to an adapter."""
from __future__ import annotations

from pathlib import Path

from .base import ModelAdapter, UnknownModelError

#: user-facing names of timm vision transformers -> timm model names
VIT_ALIASES = {
    "vit-t": "vit_tiny_patch16_224",
    "vit-s": "vit_small_patch16_224",
    "vit-b": "vit_base_patch16_224",
    "vit-l": "vit_large_patch16_224",
    "deit-t": "deit_tiny_patch16_224",
    "deit-s": "deit_small_patch16_224",
    "deit-b": "deit_base_patch16_224",
    "deit3-s": "deit3_small_patch16_224",
    "deit3-b": "deit3_base_patch16_224",
    "swin-t": "swin_tiny_patch4_window7_224",
    "swin-s": "swin_small_patch4_window7_224",
    "swin-b": "swin_base_patch4_window7_224",
}
TEXT_ALIASES = {"minilm": "encoder", "smollm2-135m": "causal_lm"}
MODEL_ALIASES = sorted([*VIT_ALIASES, *TEXT_ALIASES])


def load_model(name: str, weights: str | None = None, random_weights: bool = False,
               device: str = "cpu") -> ModelAdapter:
    """Resolve ``name`` (an alias, a timm name, or a local HF folder) to a loaded adapter.

    ``weights``: a local weights file/folder (timm models). ``random_weights``: build a timm
    model with random weights (for plumbing and export numerics only, never accuracy).
    """
    from . import text, vision

    if (weights is not None or random_weights) and model_family(name) not in ("vit", None):
        option = "--weights" if weights is not None else "--random-weights"
        raise UnknownModelError(f"{option} applies to timm vision models only; {name!r} is a "
                                f"{model_family(name).replace('_', ' ')} model (it loads its own weights)")
    if name == "minilm":
        adapter = text.load_minilm()
    elif name == "smollm2-135m":
        adapter = text.load_smollm2()
    elif name in VIT_ALIASES or vision.is_timm_name(name):
        adapter = vision.load_timm(name, VIT_ALIASES.get(name, name), weights, random_weights)
    elif Path(name).is_dir():
        adapter = text.load_hf_folder(Path(name))
    else:
        raise UnknownModelError(
            f"unknown model {name!r}: use one of {', '.join(MODEL_ALIASES)}, a timm model name, "
            "or the path of a local Hugging Face model folder"
        )
    adapter.model.to(device)
    return adapter


def model_family(name: str) -> str | None:
    """``encoder``, ``causal_lm`` or ``vit`` for a model name, without loading it (``None``: unknown).

    A local Hugging Face folder is classified from its ``config.json`` as ``load_model`` would.
    """
    if name in TEXT_ALIASES:
        return TEXT_ALIASES[name]
    if name in VIT_ALIASES:
        return "vit"
    path = Path(name)
    if path.is_dir():
        import json

        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        architectures = config.get("architectures") or [] if isinstance(config, dict) else []
        return "causal_lm" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"
    from . import vision

    return "vit" if vision.is_timm_name(name) else None
