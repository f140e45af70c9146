"""Model adapters: one small module per family on one shared pipeline.

``load_model(name, ...)`` returns a ``ModelAdapter``; see ``base.py`` for what an adapter provides.
"""
from __future__ import annotations

from .base import ModelAdapter, UnknownModelError
from .registry import MODEL_ALIASES, load_model

__all__ = ["MODEL_ALIASES", "ModelAdapter", "UnknownModelError", "load_model"]
