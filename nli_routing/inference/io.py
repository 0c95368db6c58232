"""Reading pairs from jsonl / csv / tsv files and writing predictions as jsonl (``nli-routing predict``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["read_pairs", "write_predictions", "INPUT_SUFFIXES"]

INPUT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The pairs of a ``.jsonl`` file (one JSON object per line) or a ``.csv`` / ``.tsv`` file with a
    header row (``premise``, ``hypothesis`` and optional meta columns). Errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"input file {path} is a folder; give a .jsonl, .json, .csv or .tsv file of pairs")
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path}: unknown input format {suffix or '(none)'!r}; use one of {INPUT_SUFFIXES}")
    try:
        pairs = _read(path, suffix)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
                         f"{err.start}); expected a {suffix} file of pairs") from None
    if not pairs:
        raise ValueError(f"{path}: no pairs in the file")
    return pairs


def _read(path: Path, suffix: str) -> list[dict[str, Any]]:
    if suffix in (".jsonl", ".json"):
        pairs = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
                pairs.append(row)
    else:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = reader.fieldnames or []
            missing = [c for c in ("premise", "hypothesis") if c not in header]
            if missing:
                raise ValueError(f"{path}, line 1: header lacks column(s) {missing}; header: {header}")
            pairs = []
            for row in reader:
                if None in row:  # more cells than the header
                    raise ValueError(f"{path}, line {reader.line_num}: {len(header) + len(row[None])} cells for "
                                     f"{len(header)} header columns")
                pairs.append({k: (v if v != "" else None) for k, v in row.items()})
    return pairs


def write_predictions(rows: list[dict[str, Any]], path: str | Path | None) -> None:
    """One JSON object per line to ``path`` (written atomically), or to stdout when ``path`` is None."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path is None:
        print(text, end="")
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
