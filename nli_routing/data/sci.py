"""Loader for SCI-style implicative NLI data (Stanford Corpus of Implicatives).

The loader is hub-free: files are parsed in Python (so every error can name the
file, the 1-based line and the field), validated, and turned into a
:class:`datasets.DatasetDict` with :func:`datasets.Dataset.from_dict`.  No
loading script is ever used.

Two directory layouts are understood by :func:`load_sci`:

(a) the project/shared layout ``path/{train,validation,test}.jsonl`` (one JSON
    object per line with ``premise``, ``hypothesis``, ``label``, ``signature``
    and optionally ``construction``).  If ``variant`` is given and
    ``path/<variant>/`` holds such files, that folder is used.
(b) the official release names ``path/ci_latest_{train,dev,test}_{variant}.json``
    (``dev`` becomes ``validation``).  These files may be JSON lines or one JSON
    array of objects, and may use the aliases ``sentence1``/``sentence2``/
    ``gold_label`` for premise/hypothesis/label.

Bad input fails with :class:`SCIFormatError` naming the file, the 1-based line and the field
(malformed JSON, missing or non-string fields, unknown labels or signatures, non-UTF-8 bytes, an
empty split). One fallback is accepted and counted: an empty (or all-whitespace) premise or
hypothesis is kept as ``""`` (the encoders give it an empty id list); the counts per split are
logged as a warning and returned by ``load_sci(..., return_report=True)``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets

from .hub import load_from_hub

logger = logging.getLogger(__name__)

__all__ = [
    "subsample_covering",
    "LABELS",
    "SIGNATURES",
    "VARIANTS",
    "SPLITS",
    "SCIFormatError",
    "sci_features",
    "load_sci",
    "load_sci_split",
    "check_meta_coverage",
    "load_sci_from_hub",
]

LABELS: tuple[str, ...] = ("entails", "contradicts", "permits")
SIGNATURES: tuple[str, ...] = (
    "+|-", "-|+", "+|+", "-|-", "+|o", "o|+", "-|o", "o|-", "o|o",
    ".9|-", ".4|-", "-|.7", "+|.5",
)
VARIANTS: tuple[str, ...] = ("joint", "disjoint", "mismatch", "nested")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

#: canonical field -> accepted names in the input (first match wins)
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "premise": ("premise", "sentence1"),
    "hypothesis": ("hypothesis", "sentence2"),
    "label": ("label", "gold_label"),
    "signature": ("signature",),
}
#: split name in the official release file names -> our split name
_OFFICIAL_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
_OFFICIAL_RE = re.compile(r"^ci_latest_(train|dev|test)_(.+)\.jsonl?$")

_LABEL_ID = {name: i for i, name in enumerate(LABELS)}
_SIGNATURE_ID = {name: i for i, name in enumerate(SIGNATURES)}


class SCIFormatError(ValueError):
    """Malformed SCI input; the message names the file, the line and the field."""


def sci_features() -> datasets.Features:
    """Return the :class:`datasets.Features` of every SCI split."""
    return datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(LABELS)),
            "signature": datasets.ClassLabel(names=list(SIGNATURES)),
            "construction": datasets.Value("string"),
        }
    )


# --------------------------------------------------------------------------- parsing
def _decode_lines(path: Path) -> list[str]:
    """Read ``path`` as UTF-8, one string per line; bad bytes name the line."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    out: list[str] = []
    for i, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SCIFormatError(
                f"{path}:{i}: field <line>: invalid UTF-8 byte(s) at column "
                f"{exc.start + 1}: {line[exc.start:exc.end]!r}"
            ) from None
    return out


def _iter_json_array(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    """Yield ``(line, element)`` for a JSON array, keeping per-element line numbers."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def fail(pos: int, what: str) -> SCIFormatError:
        return SCIFormatError(f"{path}:{line_of(pos)}: field <json>: {what}")

    pos = text.index("[") + 1
    n = len(text)
    expect_item = True
    first = True
    while True:
        while pos < n and text[pos] in ws:
            pos += 1
        if pos >= n:
            raise fail(n, "unterminated JSON array (missing ']')")
        ch = text[pos]
        if ch == "]" and (first or not expect_item):
            pos += 1
            break
        if not expect_item:
            if ch != ",":
                raise fail(pos, f"expected ',' or ']' between array elements, found {ch!r}")
            pos += 1
            expect_item = True
            continue
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"malformed JSON: {exc.msg}") from None
        except RecursionError:
            raise fail(pos, "malformed JSON: nested too deeply") from None
        yield line_of(pos), obj
        pos, expect_item, first = end, False, False
    rest = text[pos:].strip()
    if rest:
        raise fail(pos + text[pos:].index(rest[0]), "unexpected data after the JSON array")


def _read_records(path: Path) -> list[tuple[int, Any]]:
    """Parse a JSON-lines file or a JSON-array file into ``(line, object)`` pairs."""
    lines = _decode_lines(path)
    text = "\n".join(lines)
    if text.lstrip().startswith("["):
        return list(_iter_json_array(path, text))
    records: list[tuple[int, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((i, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SCIFormatError(
                f"{path}:{i}: field <json>: malformed JSON at column {exc.colno}: {exc.msg}"
            ) from None
        except RecursionError:
            raise SCIFormatError(f"{path}:{i}: field <json>: malformed JSON: nested too deeply") from None
    return records


def _field(rec: dict, name: str, path: Path, line: int) -> Any:
    for key in FIELD_ALIASES[name]:
        if key in rec:
            return rec[key]
    aliases = "/".join(FIELD_ALIASES[name])
    raise SCIFormatError(
        f"{path}:{line}: field '{name}' is missing (accepted names: {aliases}); "
        f"fields found: {sorted(rec)}"
    )


def _string(value: Any, name: str, path: Path, line: int) -> str:
    if not isinstance(value, str):
        raise SCIFormatError(
            f"{path}:{line}: field '{name}' must be a string, got {type(value).__name__}: {value!r}"
        )
    return value.strip()


def _validate(rec: Any, path: Path, line: int) -> dict[str, Any]:
    """Check one record and return it in canonical form (label/signature as ids)."""
    if not isinstance(rec, dict):
        raise SCIFormatError(
            f"{path}:{line}: field <record>: expected a JSON object, got {type(rec).__name__}"
        )
    premise = _string(_field(rec, "premise", path, line), "premise", path, line)
    hypothesis = _string(_field(rec, "hypothesis", path, line), "hypothesis", path, line)
    label = _string(_field(rec, "label", path, line), "label", path, line)
    if label not in _LABEL_ID:
        raise SCIFormatError(
            f"{path}:{line}: field 'label' has unknown value {label!r}; allowed: {', '.join(LABELS)}"
        )
    signature = _string(_field(rec, "signature", path, line), "signature", path, line)
    if signature not in _SIGNATURE_ID:
        raise SCIFormatError(
            f"{path}:{line}: field 'signature' has unknown value {signature!r}; "
            f"allowed: {', '.join(SIGNATURES)}"
        )
    construction = rec.get("construction")
    construction = "" if construction is None else _string(construction, "construction", path, line)
    return {
        "premise": premise,
        "hypothesis": hypothesis,
        "label": _LABEL_ID[label],
        "signature": _SIGNATURE_ID[signature],
        "construction": construction,
    }


def _parse_split(path: Path, split: str) -> tuple[datasets.Dataset, dict[str, Any]]:
    """:func:`load_sci_split` plus its report ``{"rows", "empty_premise", "empty_hypothesis", "file"}``."""
    if not path.is_file():
        raise FileNotFoundError(f"SCI split file {path} does not exist")
    columns: dict[str, list] = {name: [] for name in sci_features()}
    first_empty: int | None = None
    for line, rec in _read_records(path):
        for key, value in _validate(rec, path, line).items():
            columns[key].append(value)
        if first_empty is None and not (columns["premise"][-1] and columns["hypothesis"][-1]):
            first_empty = line
    if not columns["premise"]:
        raise SCIFormatError(f"{path}: field <records>: split '{split}' is empty (no examples found)")
    report = {
        "rows": len(columns["premise"]),
        "empty_premise": sum(not t for t in columns["premise"]),
        "empty_hypothesis": sum(not t for t in columns["hypothesis"]),
        "file": str(path),
    }
    if first_empty is not None:
        logger.warning(
            "SCI %s: kept %d empty premise(s) and %d empty hypothesis(es) of %d rows from %s (first at line %d)",
            split, report["empty_premise"], report["empty_hypothesis"], report["rows"], path, first_empty,
        )
    return datasets.Dataset.from_dict(columns, features=sci_features(), split=split), report


def load_sci_split(path: str | Path, split: str = "train") -> datasets.Dataset:
    """Parse and validate one SCI file into a :class:`datasets.Dataset`.

    Raises :class:`SCIFormatError` on any malformed content (including an empty file); empty
    sentences are kept and counted (see the module docstring).
    """
    return _parse_split(Path(path), split)[0]


# --------------------------------------------------------------------------- layouts
def _official_variants(root: Path) -> set[str]:
    found = set()
    if root.is_dir():
        for p in root.iterdir():
            m = _OFFICIAL_RE.match(p.name)
            if m:
                found.add(m.group(2))
    return found


def _official_file(root: Path, split: str, variant: str) -> Path:
    stem = f"ci_latest_{_OFFICIAL_SPLIT[split]}_{variant}"
    for ext in (".json", ".jsonl"):
        if (root / f"{stem}{ext}").exists():
            return root / f"{stem}{ext}"
    return root / f"{stem}.json"


def _resolve_files(root: Path, variant: str | None, splits: Sequence[str]) -> dict[str, Path]:
    """Map each requested split to the file that holds it (see module docstring)."""
    if variant is not None and any((root / variant / f"{s}.jsonl").exists() for s in SPLITS):
        root = root / variant
    if any((root / f"{s}.jsonl").exists() for s in SPLITS):
        files = {s: root / f"{s}.jsonl" for s in splits}
    else:
        found = _official_variants(root)
        if variant is None:
            if len(found) == 1:
                variant = next(iter(found))
            elif found:
                raise ValueError(
                    f"{root} holds official SCI files for several variants {sorted(found)}; "
                    "pass variant=..."
                )
            else:
                expected = [str(root / f"{s}.jsonl") for s in splits] + [
                    str(root / f"ci_latest_{_OFFICIAL_SPLIT[s]}_<variant>.json") for s in splits
                ]
                raise FileNotFoundError(f"no SCI data found; expected files: {expected}")
        files = {s: _official_file(root, s, variant) for s in splits}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing SCI split file(s): {missing}")
    return files


def load_sci(
    path: str | Path,
    variant: str | None = None,
    splits: Sequence[str] = SPLITS,
    *,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, dict[str, dict[str, Any]]]:
    """Load SCI splits from the directory ``path`` into a :class:`datasets.DatasetDict`.

    ``variant`` selects the official files ``ci_latest_<split>_<variant>.json``
    (inferred when only one variant is present) or a ``path/<variant>/``
    subfolder of the jsonl layout.  Raises :class:`FileNotFoundError` for
    missing split files and :class:`SCIFormatError` for malformed content.
    With ``return_report=True`` returns ``(data, report)``, ``report[split] =
    {"rows", "empty_premise", "empty_hypothesis", "file"}`` (empty sentences are kept).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"SCI path is not a directory: {root}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; allowed: {list(SPLITS)}")
    files = _resolve_files(root, variant, splits)
    parts, report = {}, {}
    for split in splits:
        parts[split], report[split] = _parse_split(files[split], split)
    dsd = datasets.DatasetDict(parts)
    return (dsd, report) if return_report else dsd


# --------------------------------------------------------------------------- checks
def _values(ds: datasets.Dataset, column: str) -> Counter:
    values = ds[column]
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.int2str(v) for v in values]
    return Counter(values)


def subsample_covering(dataset: datasets.Dataset, n: int, column: str, seed: int = 0) -> datasets.Dataset:
    """``n`` rows of ``dataset`` in a shuffled order (``seed``) that hold every class of ``column`` present
    in it: the first row of each class in that order, then the next rows in order. A quick run's
    training subset then has an agent's data for every meta class. ``n`` smaller than the number of
    classes raises ``ValueError`` saying the size that works."""
    n = min(int(n), len(dataset))
    order = dataset.shuffle(seed=seed)
    values = order[column]
    first: dict = {}
    for i, v in enumerate(values):
        first.setdefault(v, i)
    if n < len(first):
        raise ValueError(f"--max_train_samples {n} cannot hold the {len(first)} {column} classes of the training "
                         f"data: use at least {len(first)}")
    keep = sorted(first.values())
    chosen = set(keep)
    rest = [i for i in range(len(values)) if i not in chosen][: n - len(keep)]
    return order.select(sorted(keep + rest))


def check_meta_coverage(
    dsd: datasets.DatasetDict,
    column: str = "signature",
    allow_unseen: bool = False,
) -> set:
    """Check that every ``column`` value in non-train splits also occurs in train.

    Returns the set of unseen values (empty when coverage is complete) if
    ``allow_unseen`` is true; otherwise raises :class:`ValueError` naming each
    unseen value, its count and split.
    """
    if "train" not in dsd:
        raise ValueError(f"check_meta_coverage needs a 'train' split; got {list(dsd)}")
    seen = set(_values(dsd["train"], column))
    unseen: set = set()
    problems: list[str] = []
    for split in dsd:
        if split == "train":
            continue
        for value, count in sorted(_values(dsd[split], column).items(), key=lambda kv: str(kv[0])):
            if value not in seen:
                unseen.add(value)
                times = "time" if count == 1 else "times"
                problems.append(f"{column} '{value}' appears {count} {times} in {split} but never in train")
    if problems and not allow_unseen:
        raise ValueError("; ".join(problems))
    return unseen


def load_sci_from_hub(repo_id: str, **kwargs: Any) -> datasets.DatasetDict:
    """Thin wrapper over :func:`datasets.load_dataset` (needs Hub access).

    A ``dev`` split, if present, is renamed ``validation``.
    """
    dsd = load_from_hub(
        repo_id, "pass an SCI folder (train/validation/test.jsonl or the official ci_latest_* files)", **kwargs
    )
    if isinstance(dsd, datasets.DatasetDict) and "dev" in dsd and "validation" not in dsd:
        dsd["validation"] = dsd.pop("dev")
    return dsd
