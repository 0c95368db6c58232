"""Tests for the SCI loader (nli_routing.data.sci); all inputs are written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from nli_routing.data.sci import (
    LABELS,
    SIGNATURES,
    SCIFormatError,
    check_meta_coverage,
    load_sci,
    sci_features,
)

ROWS = [
    {"premise": "Ann managed to leave", "hypothesis": "Ann left", "label": "entails",
     "signature": "+|-", "construction": "manage"},
    {"premise": "Ann did not manage to leave", "hypothesis": "Ann left", "label": "contradicts",
     "signature": "+|-", "construction": "manage"},
    {"premise": "Ann tried to leave", "hypothesis": "Ann left", "label": "permits", "signature": "o|o"},
]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _project_layout(root: Path, rows: list = ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        _jsonl(root / f"{split}.jsonl", rows)
    return root


def _official(row: dict) -> dict:
    return {"sentence1": row["premise"], "sentence2": row["hypothesis"],
            "gold_label": row["label"], "signature": row["signature"]}


# --------------------------------------------------------------------------- layouts
def test_project_layout_features_and_values(tmp_path: Path) -> None:
    dsd = load_sci(_project_layout(tmp_path / "joint"))
    assert list(dsd) == ["train", "validation", "test"]
    train = dsd["train"]
    assert train.features == sci_features()
    assert isinstance(train.features["label"], datasets.ClassLabel)
    assert isinstance(train.features["signature"], datasets.ClassLabel)
    assert train.features["label"].names == list(LABELS)
    assert train.features["signature"].names == list(SIGNATURES)
    assert train.features["label"].int2str(train["label"]) == ["entails", "contradicts", "permits"]
    assert train["construction"] == ["manage", "manage", ""]


def test_variant_subfolder_and_splits(tmp_path: Path) -> None:
    _project_layout(tmp_path / "joint")
    dsd = load_sci(tmp_path, variant="joint", splits=("train", "test"))
    assert list(dsd) == ["train", "test"]
    with pytest.raises(ValueError, match="unknown split"):
        load_sci(tmp_path / "joint", splits=("dev",))


def test_official_names_json_array_dev_is_validation(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        rows = ROWS if split != "dev" else ROWS[:2]
        text = "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n"
        (tmp_path / f"ci_latest_{split}_disjoint.json").write_text(text, encoding="utf-8")
    dsd = load_sci(tmp_path, variant="disjoint")
    assert set(dsd) == {"train", "validation", "test"}
    assert dsd.num_rows == {"train": 3, "validation": 2, "test": 3}
    # variant inferred when only one variant's files exist
    assert load_sci(tmp_path).num_rows == dsd.num_rows


def test_official_names_json_lines_with_aliases(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        _jsonl(tmp_path / f"ci_latest_{split}_mismatch.json", [_official(r) for r in ROWS])
    dsd = load_sci(tmp_path, variant="mismatch")
    assert dsd["validation"]["premise"] == [r["premise"] for r in ROWS]
    assert dsd["test"].features["label"].int2str(dsd["test"]["label"]) == [r["label"] for r in ROWS]
    assert dsd["train"]["construction"] == ["", "", ""]


def test_several_official_variants_need_variant(tmp_path: Path) -> None:
    for variant in ("joint", "disjoint"):
        for split in ("train", "dev", "test"):
            _jsonl(tmp_path / f"ci_latest_{split}_{variant}.json", ROWS)
    with pytest.raises(ValueError, match="variant"):
        load_sci(tmp_path)
    assert load_sci(tmp_path, variant="joint")["train"].num_rows == 3


def test_blank_lines_whitespace_and_empty_sentences(tmp_path: Path) -> None:
    root = _project_layout(tmp_path)
    row = {"premise": "  ", "hypothesis": " Ann left \t", "label": " permits", "signature": "o|o"}
    (root / "train.jsonl").write_text("\n" + json.dumps(row) + "\n\n   \n", encoding="utf-8")
    train = load_sci(root)["train"]
    assert train.num_rows == 1
    assert train[0]["premise"] == "" and train[0]["hypothesis"] == "Ann left"


# --------------------------------------------------------------------------- bad input
def _bad_train(tmp_path: Path, content: bytes | str) -> Path:
    root = _project_layout(tmp_path)
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    (root / "train.jsonl").write_bytes(data)
    return root


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    root = _bad_train(tmp_path, json.dumps(ROWS[0]) + "\n\n" + '{"premise": "x", \n')
    with pytest.raises(SCIFormatError) as err:
        load_sci(root)
    assert "train.jsonl:3" in str(err.value)


def test_malformed_json_array_names_line(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        _jsonl(tmp_path / f"ci_latest_{split}_joint.json", ROWS)
    bad = "[\n" + json.dumps(ROWS[0]) + ",\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]) + "\n]"
    (tmp_path / "ci_latest_dev_joint.json").write_text(bad, encoding="utf-8")
    with pytest.raises(SCIFormatError, match=r"ci_latest_dev_joint\.json:4"):
        load_sci(tmp_path)


def test_unknown_label_lists_allowed(tmp_path: Path) -> None:
    root = _bad_train(tmp_path, json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[0], "label": "neutral"}))
    with pytest.raises(SCIFormatError) as err:
        load_sci(root)
    msg = str(err.value)
    assert "train.jsonl:2" in msg and "'label'" in msg and "neutral" in msg
    assert all(name in msg for name in LABELS)


def test_unknown_signature_lists_allowed(tmp_path: Path) -> None:
    root = _bad_train(tmp_path, json.dumps({**ROWS[0], "signature": "+|?"}))
    with pytest.raises(SCIFormatError) as err:
        load_sci(root)
    msg = str(err.value)
    assert "train.jsonl:1" in msg and "'signature'" in msg and "+|?" in msg
    assert all(sig in msg for sig in SIGNATURES)


def test_missing_field_lists_found_fields(tmp_path: Path) -> None:
    row = {k: v for k, v in ROWS[0].items() if k != "hypothesis"}
    root = _bad_train(tmp_path, json.dumps(row))
    with pytest.raises(SCIFormatError) as err:
        load_sci(root)
    msg = str(err.value)
    assert "train.jsonl:1" in msg and "'hypothesis'" in msg and "missing" in msg
    assert "'premise'" in msg and "'signature'" in msg  # fields found


def test_non_string_field(tmp_path: Path) -> None:
    root = _bad_train(tmp_path, json.dumps({**ROWS[0], "premise": 3}))
    with pytest.raises(SCIFormatError, match=r"train\.jsonl:1: field 'premise'"):
        load_sci(root)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    good = json.dumps(ROWS[0]).encode()
    root = _bad_train(tmp_path, good + b"\n" + good.replace(b"Ann", b"\xff\xfenn") + b"\n")
    with pytest.raises(SCIFormatError) as err:
        load_sci(root)
    assert "train.jsonl:2" in str(err.value) and "UTF-8" in str(err.value)


def test_empty_split(tmp_path: Path) -> None:
    root = _bad_train(tmp_path, "\n  \n")
    with pytest.raises(SCIFormatError, match="split 'train' is empty"):
        load_sci(root)


def test_missing_split_file(tmp_path: Path) -> None:
    root = _project_layout(tmp_path)
    (root / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_sci(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="ci_latest_train"):
        load_sci(empty)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_sci(tmp_path / "absent")


# --------------------------------------------------------------------------- coverage
def test_check_meta_coverage(tmp_path: Path) -> None:
    root = _project_layout(tmp_path)
    assert check_meta_coverage(load_sci(root)) == set()
    unseen_rows = ROWS + [{**ROWS[0], "signature": "+|.5"}, {**ROWS[1], "signature": "+|.5"}]
    _jsonl(root / "test.jsonl", unseen_rows)
    dsd = load_sci(root)
    with pytest.raises(ValueError) as err:
        check_meta_coverage(dsd)
    assert "signature '+|.5' appears 2 times in test but never in train" in str(err.value)
    assert check_meta_coverage(dsd, allow_unseen=True) == {"+|.5"}
    assert check_meta_coverage(dsd, column="construction") == set()


# --------------------------------------------------------------------------- real corpus (opt-in)
REAL_SCI = Path(__file__).resolve().parents[1].parent / "shared/data/sci"


@pytest.mark.slow  # real-data test (pyproject marker); skips when the corpus is absent
def test_real_sci_joint_loads_if_present() -> None:
    if not (REAL_SCI / "joint").is_dir():
        pytest.skip(f"real SCI corpus not found at {REAL_SCI / 'joint'}")
    dsd = load_sci(REAL_SCI / "joint")
    assert all(dsd[s].num_rows > 1000 for s in ("train", "validation", "test"))
    check_meta_coverage(dsd)


def test_sci_from_hub_offline_names_the_local_alternative(monkeypatch):
    import datasets

    from nli_routing.data.sci import load_sci_from_hub

    def offline(repo_id, **kw):
        raise OSError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="'someone/sci'.*OSError.*SCI folder"):
        load_sci_from_hub("someone/sci")


def test_a_capped_training_set_keeps_every_signature():
    """Issue 31: `--max_train_samples 64` on the embedded data keeps a row of every signature (a plain
    shuffled head of 64 rows missed one); fewer rows than signatures is a one-line error saying what works."""
    from nli_routing.data import EMBEDDED_SCI
    from nli_routing.data.sci import load_sci, subsample_covering

    train = load_sci(EMBEDDED_SCI / "joint")["train"]
    everything = set(train["signature"])
    for n in (13, 64, 200):
        sub = subsample_covering(train, n, "signature")
        assert len(sub) == n and set(sub["signature"]) == everything
        assert subsample_covering(train, n, "signature")["premise"] == sub["premise"]  # deterministic
    with pytest.raises(ValueError, match=r"cannot hold the 13 signature classes.*use at least 13"):
        subsample_covering(train, 5, "signature")
