"""MultiNLI with its genre as meta-information, on ``datasets``.

:func:`load_multinli` reads, in this order of preference:

* the official release files ``multinli_1.0_{train,dev_matched,dev_mismatched}.jsonl`` (directly
  in ``path`` or in ``path/multinli_1.0/``; the tab-separated ``.txt`` files of the release work too);
* GLUE's MNLI folder: ``{train,dev_matched,dev_mismatched}.tsv`` (tab-separated with a header row,
  no quoting: GLUE's files contain unbalanced quotes);
* with ``path=None``, the Hub: ``load_dataset("nyu-mll/multi_nli")`` (needs network access).

Every source gives the same :func:`multinli_features` and the splits ``train``,
``validation_matched`` and ``validation_mismatched`` (the Hub's names). ``label`` keeps MultiNLI's
own classes in the Hub's order (entailment, neutral, contradiction; 3 classes like SCI, but not
SCI's names); ``genre`` is a :class:`datasets.ClassLabel` over all ten genres (the five training
genres first), so matched and mismatched validation share one encoding. Rows whose gold label is
``"-"`` (no annotator majority) are dropped and counted (logged, and returned with
``return_report=True``). Empty premises or hypotheses are kept as ``""`` and counted the same way
(``empty_premise`` / ``empty_hypothesis`` in the report). Malformed input fails with
:class:`MultiNLIFormatError` naming the file, the 1-based line and the field (a ``.tsv``/``.txt``
header that lacks a required column names line 1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import datasets

from .hub import load_from_hub

__all__ = [
    "LABELS",
    "GENRES",
    "MATCHED_GENRES",
    "MISMATCHED_GENRES",
    "SPLITS",
    "HUB_ID",
    "MultiNLIFormatError",
    "multinli_features",
    "load_multinli",
    "load_multinli_file",
    "multinli_file_names",
]

logger = logging.getLogger(__name__)

HUB_ID = "nyu-mll/multi_nli"
LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
MATCHED_GENRES: tuple[str, ...] = ("fiction", "government", "slate", "telephone", "travel")
MISMATCHED_GENRES: tuple[str, ...] = ("facetoface", "letters", "nineeleven", "oup", "verbatim")
GENRES: tuple[str, ...] = MATCHED_GENRES + MISMATCHED_GENRES
SPLITS: tuple[str, ...] = ("train", "validation_matched", "validation_mismatched")
NO_GOLD = "-"

#: our split -> the split part of the official / GLUE file names
_FILE_SPLIT = {"train": "train", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}
#: canonical field -> accepted names (official release and GLUE use the first; Hub-style names too)
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "premise": ("sentence1", "premise"),
    "hypothesis": ("sentence2", "hypothesis"),
    "label": ("gold_label", "label"),
    "genre": ("genre",),
    "pairID": ("pairID",),
    "promptID": ("promptID",),
}
_REQUIRED = ("premise", "hypothesis", "label", "genre")
_LABEL_ID = {name: i for i, name in enumerate(LABELS)}
_GENRE_ID = {name: i for i, name in enumerate(GENRES)}


class MultiNLIFormatError(ValueError):
    """Malformed MultiNLI input; the message names the file, the line and the field."""


def multinli_features() -> datasets.Features:
    """The :class:`datasets.Features` of every MultiNLI split, whatever the source."""
    return datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(LABELS)),
            "genre": datasets.ClassLabel(names=list(GENRES)),
            "pairID": datasets.Value("string"),
            "promptID": datasets.Value("string"),
        }
    )


def multinli_file_names(split: str) -> dict[str, str]:
    """The official and GLUE file names of ``split``: ``{"jsonl": ..., "txt": ..., "tsv": ...}``."""
    part = _FILE_SPLIT[split]
    return {"jsonl": f"multinli_1.0_{part}.jsonl", "txt": f"multinli_1.0_{part}.txt", "tsv": f"{part}.tsv"}


# --------------------------------------------------------------------------- parsing
def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise MultiNLIFormatError(
                f"{path}:{i}: field <line>: invalid UTF-8 byte(s) at column {exc.start + 1}: "
                f"{line[exc.start:exc.end]!r}"
            ) from None
    return out


def _jsonl_records(path: Path) -> list[tuple[int, dict]]:
    records = []
    for i, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MultiNLIFormatError(f"{path}:{i}: field <json>: malformed JSON at column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise MultiNLIFormatError(f"{path}:{i}: field <json>: malformed JSON: nested too deeply") from None
        if not isinstance(rec, dict):
            raise MultiNLIFormatError(f"{path}:{i}: field <record>: expected a JSON object, got {type(rec).__name__}")
        records.append((i, rec))
    return records


def _tsv_records(path: Path) -> list[tuple[int, dict]]:
    """Tab-separated rows with a header line (GLUE ``.tsv``, release ``.txt``); no quoting."""
    lines = _lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return []
    header = lines[0].split("\t")
    for name in _REQUIRED:
        if not any(key in header for key in FIELD_ALIASES[name]):
            raise MultiNLIFormatError(
                f"{path}:1: field '{name}' is missing from the header (accepted names: "
                f"{'/'.join(FIELD_ALIASES[name])}); columns found: {header}"
            )
    records = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise MultiNLIFormatError(
                f"{path}:{i}: field <row>: {len(cells)} tab-separated fields, the header has {len(header)}"
            )
        records.append((i, dict(zip(header, cells))))
    return records


def _field(rec: dict, name: str, path: Path, line: int, required: bool = True) -> Any:
    for key in FIELD_ALIASES[name]:
        if key in rec:
            return rec[key]
    if not required:
        return None
    raise MultiNLIFormatError(
        f"{path}:{line}: field '{name}' is missing (accepted names: {'/'.join(FIELD_ALIASES[name])}); "
        f"fields found: {sorted(rec)}"
    )


def _text(value: Any, name: str, path: Path, line: int) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("pairID", "promptID"):
        return str(value)
    if not isinstance(value, str):
        raise MultiNLIFormatError(f"{path}:{line}: field '{name}' must be a string, got {type(value).__name__}: {value!r}")
    return value.strip()


def load_multinli_file(path: str | Path, split: str = "train") -> tuple[datasets.Dataset, int]:
    """Parse one MultiNLI file (``.jsonl``, ``.txt`` or ``.tsv``); returns ``(dataset, dropped)``.

    ``dropped`` counts the rows whose gold label is ``"-"``.
    """
    path = Path(path)
    records = _jsonl_records(path) if path.suffix == ".jsonl" else _tsv_records(path)
    columns: dict[str, list] = {name: [] for name in multinli_features()}
    dropped = 0
    for line, rec in records:
        values = {name: _text(_field(rec, name, path, line), name, path, line) for name in _REQUIRED}
        if values["label"] == NO_GOLD:
            dropped += 1
            continue
        if values["label"] not in _LABEL_ID:
            raise MultiNLIFormatError(
                f"{path}:{line}: field 'label' has unknown value {values['label']!r}; "
                f"allowed: {', '.join(LABELS)} (or '{NO_GOLD}', dropped)"
            )
        if values["genre"] not in _GENRE_ID:
            raise MultiNLIFormatError(
                f"{path}:{line}: field 'genre' has unknown value {values['genre']!r}; allowed: {', '.join(GENRES)}"
            )
        columns["premise"].append(values["premise"])
        columns["hypothesis"].append(values["hypothesis"])
        columns["label"].append(_LABEL_ID[values["label"]])
        columns["genre"].append(_GENRE_ID[values["genre"]])
        for name in ("pairID", "promptID"):
            value = _field(rec, name, path, line, required=False)
            columns[name].append("" if value is None else _text(value, name, path, line))
    if not columns["premise"]:
        raise MultiNLIFormatError(
            f"{path}: field <records>: split '{split}' has no labelled examples "
            f"({len(records)} rows read, {dropped} without a gold label dropped)"
        )
    return datasets.Dataset.from_dict(columns, features=multinli_features(), split=split), dropped


# --------------------------------------------------------------------------- layouts
def _find_file(root: Path, split: str) -> Path | None:
    names = multinli_file_names(split)
    for folder in (root, root / "multinli_1.0"):
        for kind in ("jsonl", "txt", "tsv"):
            if (folder / names[kind]).is_file():
                return folder / names[kind]
    return None


def _from_hub(hub_id: str, splits: Sequence[str], **kwargs: Any) -> tuple[datasets.DatasetDict, dict]:
    """The Hub copy, converted to :func:`multinli_features` (needs network access)."""
    raw = load_from_hub(
        hub_id,
        "pass the folder of the official files (multinli_1.0_*.jsonl) or of GLUE's MNLI (train.tsv, dev_matched.tsv, ...)",
        **kwargs,
    )
    features = multinli_features()
    out, report = {}, {}
    for split in splits:
        ds = raw[split]
        n = len(ds)
        ds = ds.filter(lambda label: label in (0, 1, 2), input_columns="label")  # the Hub marks "-" as -1 if kept
        ds = ds.map(
            lambda b: {"genre": [_GENRE_ID[g] for g in b["genre"]], "promptID": [str(x) for x in b["promptID"]]},
            batched=True,
        )
        out[split] = ds.select_columns(list(features)).cast(features)
        report[split] = {"rows": len(out[split]), "dropped_no_gold": n - len(out[split]), "file": hub_id}
    return datasets.DatasetDict(out), report


def load_multinli(
    path: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    *,
    hub_id: str = HUB_ID,
    return_report: bool = False,
    **hub_kwargs: Any,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, dict[str, dict[str, Any]]]:
    """Load MultiNLI splits (``train``, ``validation_matched``, ``validation_mismatched``).

    ``path``: a folder with the official release files or GLUE's MNLI ``.tsv`` files (see the module
    docstring); ``None`` loads ``hub_id`` from the Hub. With ``return_report=True`` returns
    ``(data, report)``, ``report[split] = {"rows", "dropped_no_gold", "empty_premise",
    "empty_hypothesis", "file"}``.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown MultiNLI split(s) {unknown}; allowed: {list(SPLITS)}")
    if path is None:
        dsd, report = _from_hub(hub_id, splits, **hub_kwargs)
    else:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"MultiNLI path is not a directory: {root}")
        files = {s: _find_file(root, s) for s in splits}
        missing = [s for s, f in files.items() if f is None]
        if missing:
            expected = {s: sorted(multinli_file_names(s).values()) for s in missing}
            raise FileNotFoundError(f"no MultiNLI file for split(s) {missing} in {root}; expected one of {expected}")
        parts, report = {}, {}
        for split, file in files.items():
            parts[split], dropped = load_multinli_file(file, split)
            report[split] = {"rows": len(parts[split]), "dropped_no_gold": dropped, "file": str(file)}
        dsd = datasets.DatasetDict(parts)
    for split, r in report.items():
        for side in ("premise", "hypothesis"):
            r[f"empty_{side}"] = sum(not t for t in dsd[split][side])
        logger.info("MultiNLI %s: %d rows (%d without a gold label dropped; %d empty premises and %d empty "
                    "hypotheses kept) from %s", split, r["rows"], r["dropped_no_gold"], r["empty_premise"],
                    r["empty_hypothesis"], r["file"])
    return (dsd, report) if return_report else dsd
