"""Small output helpers: atomic JSON and text writes (umask permissions), plain tables."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .files import atomic_write


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, data) -> None:
    text = json.dumps(_clean(data), indent=2, sort_keys=False) + "\n"
    write_text(path, text)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def format_table(rows: list[dict], columns: list[str], floats: str = "{:.4f}") -> str:
    cells = [[c for c in columns]]
    for row in rows:
        cells.append([floats.format(row[c]) if isinstance(row[c], float) else str(row[c]) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[str], floats: str = "{:.4f}") -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(floats.format(row[c]) if isinstance(row[c], float) else str(row[c])
                                      for c in columns) + " |")
    return "\n".join(out)
