"""The demo corpora: text that ships with Python itself, cut into prompt-sized snippets.

- ``code``: sources of a fixed list of standard-library packages (no tests).
- ``docs``: the documentation topics in ``pydoc_data.topics``.
- ``legal``: licence texts — the interpreter's ``LICENSE.txt`` first, then the licence files of
  installed distributions, sorted by file name and deduplicated. The installed set differs between
  machines, so the legal corpus (only) may differ too; everything else depends on the Python version.

Snippets are whole lines, 150–400 characters (so the small domains still yield over a thousand).
Which snippets are kept (a per-domain cap) and which
split each one lands in are both decided by :func:`router.hashing.stable_fraction` of the snippet,
each with its own salt, so the result does not depend on file order, and the cap does not skew
the split.
"""

from __future__ import annotations

import re
import site
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from router.hashing import Salt, stable_fraction

DOMAINS = ("code", "docs", "legal")
CODE_PACKAGES = ("argparse", "asyncio", "collections", "json", "email", "http", "logging", "pathlib",
                 "unittest", "xml", "dataclasses", "functools", "typing", "csv", "shutil", "subprocess")
LICENCE_PATTERNS = ("*.dist-info/LICENSE*", "*.dist-info/LICENCE*", "*.dist-info/COPYING*",
                    "*.dist-info/licenses/**/*")
MAX_LICENCE_CHARS = 600_000
SPLITS = {"heldout": 0.10, "traffic": 0.40}  # the rest is "train" (what the experts learn from)
SNIPPET_CHARS = (150, 400)


def snippets(text: str, low: int = SNIPPET_CHARS[0], high: int = SNIPPET_CHARS[1]) -> list[str]:
    """Whole-line snippets of ``low``..``high`` characters (over-long lines are cut), at least 8 words each."""
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        line = line.rstrip()[:high]
        if current and len(current) + len(line) + 1 > high:
            if len(current.strip()) >= low:
                out.append(current.strip("\n"))
            current = ""
        if not line.strip() and not current:
            continue
        current += line + "\n"
    if len(current.strip()) >= low:
        out.append(current.strip("\n"))
    return [s for s in out if len(s.split()) >= 8]


def code_text() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    for package in CODE_PACKAGES:
        directory = root / package
        files = sorted(directory.rglob("*.py")) if directory.is_dir() else [root / f"{package}.py"]
        for path in files:
            relative = path.relative_to(root).parts
            if path.is_file() and not any(p.startswith("test") for p in relative):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


def docs_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _licence_files() -> list[Path]:
    directories = sorted({*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found: dict[str, Path] = {}
    for directory in directories:
        for pattern in LICENCE_PATTERNS:
            for path in Path(directory).glob(pattern):
                if path.is_file():
                    found.setdefault(path.relative_to(directory).as_posix(), path)
    return [found[key] for key in sorted(found)]


def legal_text(max_chars: int = MAX_LICENCE_CHARS) -> str:
    paths = [Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", *_licence_files()]
    seen: set[str] = set()
    texts: list[str] = []
    total = 0
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        key = _normalised(text)
        if key in seen:
            continue
        seen.add(key)
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n\n".join(texts)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def split_of(snippet: str) -> str:
    value = stable_fraction(snippet, salt=Salt.CORPUS_SPLIT)
    for name, share in SPLITS.items():
        if value < share:
            return name
        value -= share
    return "train"


def domain_prompts(domain: str, text: str, max_snippets: int) -> list[dict[str, str]]:
    """Distinct snippets (whitespace-normalised) of one domain, capped by hash, with their split."""
    unique: dict[str, str] = {}
    for snippet in snippets(text):
        unique.setdefault(_normalised(snippet), snippet)
    kept = sorted(unique.values(), key=lambda s: stable_fraction(s, salt=Salt.CORPUS_KEEP))[:max_snippets]
    return [{"prompt": s, "domain": domain, "split": split_of(s)} for s in kept]


def collect_prompts(max_snippets: int = 1600, domains: Iterable[str] = DOMAINS) -> list[dict[str, str]]:
    sources = {"code": code_text, "docs": docs_text, "legal": legal_text}
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for domain in domains:  # a snippet found in two domains stays in the first only
        rows += [r for r in domain_prompts(domain, sources[domain](), max_snippets) if r["prompt"] not in seen]
        seen.update(r["prompt"] for r in rows)
    return rows
