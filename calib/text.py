"""Real text that exists on every machine with Python: the standard library's docstrings.

The offline default for calibration and evaluation is English prose written by people: the
module, class and function docstrings of this interpreter's standard library (``.py`` files
under ``sysconfig.get_paths()['stdlib']``, read with ``ast``, never imported). Files are split
by a hash of their relative path into a calibration part and an evaluation part, so the two
never share a document. The exact text depends on the Python version (3.11 here).

Users can pass their own plain-text files or folders instead (``read_text_source``).
"""
from __future__ import annotations

import ast
import re
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path

SPLITS = ("calib", "eval")
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__", "ensurepip"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts):
            continue
        files.append(path)
    if not files:
        raise FileNotFoundError(f"no standard-library sources found under {root}")
    return files


def _split_of(path: Path) -> str:
    rel = path.relative_to(Path(sysconfig.get_paths()["stdlib"])).as_posix()
    return "eval" if zlib.crc32(rel.encode()) % 4 == 0 else "calib"


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                docs.append(doc)
    return docs


def _is_prose(paragraph: str) -> bool:
    letters = sum(ch.isalpha() or ch == " " for ch in paragraph)
    return len(paragraph) >= 40 and letters / len(paragraph) > 0.85 and ">>>" not in paragraph


@lru_cache(maxsize=4)
def stdlib_paragraphs(split: str) -> tuple[str, ...]:
    """Prose paragraphs of the standard library's docstrings for ``split`` ('calib' or 'eval')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    paragraphs = []
    for path in _stdlib_files():
        if _split_of(path) != split:
            continue
        for doc in _docstrings(path):
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                if _is_prose(para):
                    paragraphs.append(para)
    paragraphs = list(dict.fromkeys(paragraphs))  # de-duplicated, order kept
    if split == "eval":
        seen = set(stdlib_paragraphs("calib"))
        paragraphs = [p for p in paragraphs if p not in seen]
    return tuple(paragraphs)


def stdlib_sentences(split: str, min_chars: int = 30, max_chars: int = 300) -> list[str]:
    """Sentences (de-duplicated, in a fixed order) from ``stdlib_paragraphs(split)``."""
    sentences = list(dict.fromkeys(_raw_sentences(split, min_chars, max_chars)))
    if split == "eval":  # the same sentence can occur in two files: keep evaluation disjoint
        seen = set(_raw_sentences("calib", min_chars, max_chars))
        sentences = [s for s in sentences if s not in seen]
    return sentences


@lru_cache(maxsize=8)
def _raw_sentences(split: str, min_chars: int, max_chars: int) -> tuple[str, ...]:
    out = []
    for para in stdlib_paragraphs(split):
        for sentence in _SENTENCE_END.split(para):
            if min_chars <= len(sentence) <= max_chars and _is_prose(sentence):
                out.append(sentence)
    return tuple(out)


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file (a BOM is allowed); a binary or non-UTF-8 file is a ``ValueError``
    naming the file."""
    path = Path(path)
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path} is not a text file (it holds NUL bytes: binary data?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}: "
                         f"{exc.reason}); save it as UTF-8") from None
    controls = sum(ch < " " and ch not in "\t\n\r\f\v" for ch in text)
    if controls > max(8, len(text) // 100):
        raise ValueError(f"{path} does not look like text ({controls} control characters in {len(text)}: binary data?)")
    return text


def read_text_source(source: str | Path) -> str:
    """All text of a plain-text file, or of the ``.txt``/``.md`` files of a folder (sorted)."""
    path = Path(source)
    if path.is_file():
        return read_text_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".md", ".text"} and p.is_file())
        if not files:
            raise FileNotFoundError(f"text folder {path} holds no .txt/.md files")
        return "\n\n".join(read_text_file(p) for p in files)
    raise FileNotFoundError(f"text source {path} does not exist")


def text_sentences(source: str | Path) -> list[str]:
    """Non-empty lines (or sentences of long lines) of a user text source."""
    out = []
    for line in read_text_source(source).splitlines():
        line = line.strip()
        if not line:
            continue
        out.extend(s for s in _SENTENCE_END.split(line) if len(s) >= 3)
    if not out:
        raise ValueError(f"text source {source} holds no sentences")
    return out


def stdlib_corpus(split: str) -> str:
    """The paragraphs of ``split`` joined into one running text (for language-model windows)."""
    return "\n\n".join(stdlib_paragraphs(split))
