"""Bad input, end to end (issue 9): every broken input gives a clear error naming the problem and
its location (file, line, field, split or row), or a documented, counted fallback.

``test_bad_input_corpus`` runs each case of :data:`CORPUS` through the public entry point a
researcher uses (``load_sci`` on a folder, ``load_multinli`` on a folder, ``encode_nli``, a routed
model at evaluation, ``nli-routing analyze RUN_DIR``). The fallbacks (empty sentences kept,
over-long sentences truncated, unlabelled MultiNLI rows dropped) have their own tests below and
assert the counts.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from datasets import Dataset

from nli_routing.analysis.records import LayerRecord, RoutingRecord
from nli_routing.analysis.report import analyze_run
from nli_routing.cli import main as cli
from nli_routing.data.encoding import NLICollator, encode_nli
from nli_routing.data.multinli import MATCHED_GENRES, MultiNLIFormatError, load_multinli
from nli_routing.data.sci import SCIFormatError, check_meta_coverage, load_sci
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.serialization import CheckpointError

# --------------------------------------------------------------------------- good data to break
SCI_ROWS = [
    {"premise": "Ann managed to leave", "hypothesis": "Ann left", "label": "entails", "signature": "+|-"},
    {"premise": "Ann failed to leave", "hypothesis": "Ann left", "label": "contradicts", "signature": "-|+"},
    {"premise": "Ann tried to leave", "hypothesis": "Ann left", "label": "permits", "signature": "o|o"},
]
#: (genre, gold label, premise, hypothesis) of a small MultiNLI split
MNLI_ROWS = {
    "train": [("fiction", "entailment", "The dog ran home.", "An animal moved."),
              ("travel", "neutral", "The inn is near the lake.", "The inn is old.")],
    "dev_matched": [("slate", "contradiction", "The film won praise.", "The film was panned."),
                    ("fiction", "entailment", "She left.", "She went away."),
                    ("travel", "neutral", "The museum opens at nine.", "It is popular.")],
    "dev_mismatched": [("letters", "entailment", "Thank you for your gift.", "A gift was given."),
                       ("oup", "neutral", "Tea spread across Europe.", "Tea is bitter."),
                       ("nineeleven", "-", "The plane turned.", "The plane flew straight.")],
}


def _lines(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_sci(root: Path, **files: str | bytes) -> Path:
    """The jsonl layout with good splits; ``files`` (``train="..."``) replaces a split's content."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        content = files.get(split, _lines(SCI_ROWS))
        (root / f"{split}.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def mnli_line(genre: str, gold: str, premise: str, hypothesis: str, **extra: Any) -> str:
    return json.dumps({"genre": genre, "gold_label": gold, "sentence1": premise, "sentence2": hypothesis,
                       "pairID": "1e", "promptID": "1", **extra})


def write_mnli(root: Path, **files: str | bytes) -> Path:
    """The official release layout; ``files`` (``dev_matched="..."``) replaces a file's content."""
    root.mkdir(parents=True, exist_ok=True)
    for part, rows in MNLI_ROWS.items():
        content = files.get(part, "".join(mnli_line(*r) + "\n" for r in rows))
        path = root / f"multinli_1.0_{part}.jsonl"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


class WordTokenizer:
    """A whitespace tokenizer with the call signature ``encode_nli`` uses (no model files needed)."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False, **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[1 + sum(map(ord, w)) % 47 for w in t.split()] for t in texts]}


def tiny_model(num_meta: int) -> NLIRoutingModel:
    torch.manual_seed(0)
    return NLIRoutingModel(NLIModelConfig(route="wp", num_meta=num_meta), torch.randn(48, 8), pad_id=0).eval()


def evaluate(model: NLIRoutingModel, ds: Dataset, meta_column: str) -> torch.Tensor:
    """Logits of one evaluation batch over ``ds`` (encoded), as the training loop's evaluation does."""
    rows = list(ds.select_columns(["premise_ids", "hypothesis_ids", "label", meta_column]).with_format(None))
    batch = NLICollator(0, meta_column)(rows)
    with torch.no_grad():
        return model(**batch).logits


def write_run(run: Path) -> Path:
    """A run folder as training writes it: ``routing_test.npz`` and ``model.pt``."""
    actions = np.array([[0, 1], [1, 1], [2, 0]])
    RoutingRecord(meta=np.array([0, 1, 1]), meta_names=["+|-", "-|+"],
                  layers=[LayerRecord("wp", 3, actions, actions >= 0)]).save(run / "routing_test.npz")
    torch.save({"encoder.projection.router.table": torch.randn(2, 2, 3)}, run / "model.pt")
    return run


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# --------------------------------------------------------------------------- writers of broken input
def sci_malformed_json(tmp: Path) -> Path:
    return write_sci(tmp, train=_lines(SCI_ROWS[:1]) + '{"premise": "Ann left", \n' + _lines(SCI_ROWS[1:]))


def sci_unterminated_array(tmp: Path) -> Path:
    for part in ("train", "dev", "test"):
        (tmp / f"ci_latest_{part}_joint.json").write_text(json.dumps(SCI_ROWS, indent=1))
    (tmp / "ci_latest_dev_joint.json").write_text(json.dumps(SCI_ROWS, indent=1)[:-2])
    return tmp


def sci_deeply_nested(tmp: Path) -> Path:
    return write_sci(tmp, validation=_lines(SCI_ROWS) + "[" * 100_000 + "]" * 100_000 + "\n")


def sci_not_an_object(tmp: Path) -> Path:
    return write_sci(tmp, test=_lines(SCI_ROWS[:2]) + '["Ann left", "entails"]\n')


def sci_wrong_field_name(tmp: Path) -> Path:
    row = {("hypo" if k == "hypothesis" else k): v for k, v in SCI_ROWS[0].items()}
    return write_sci(tmp, train=_lines([row] + SCI_ROWS[1:]))


def sci_unknown_label(tmp: Path) -> Path:
    return write_sci(tmp, validation=_lines([SCI_ROWS[0], {**SCI_ROWS[1], "label": "neutral"}]))


def sci_unknown_signature(tmp: Path) -> Path:
    return write_sci(tmp, test=_lines([{**SCI_ROWS[0], "signature": "+|?"}]))


def sci_label_not_a_string(tmp: Path) -> Path:
    return write_sci(tmp, train=_lines(SCI_ROWS[:2] + [{**SCI_ROWS[2], "label": 2}]))


def sci_non_utf8(tmp: Path) -> Path:
    bad = json.dumps(SCI_ROWS[1]).encode().replace(b"failed", b"fa\xefled")
    return write_sci(tmp, train=json.dumps(SCI_ROWS[0]).encode() + b"\n" + bad + b"\n")


def sci_empty_split(tmp: Path) -> Path:
    return write_sci(tmp, test="\n   \n")


def sci_empty_array(tmp: Path) -> Path:
    for part in ("train", "dev", "test"):
        (tmp / f"ci_latest_{part}_joint.json").write_text(json.dumps(SCI_ROWS))
    (tmp / "ci_latest_test_joint.json").write_text("[ ]\n")
    return tmp


def sci_missing_split(tmp: Path) -> Path:
    write_sci(tmp)
    (tmp / "validation.jsonl").unlink()
    return tmp


def sci_meta_unseen_in_train(tmp: Path) -> Path:
    return write_sci(tmp, test=_lines(SCI_ROWS + [{**SCI_ROWS[0], "signature": "+|.5"}]))


def mnli_malformed_json(tmp: Path) -> Path:
    return write_mnli(tmp, train=mnli_line(*MNLI_ROWS["train"][0]) + "\n" + mnli_line(*MNLI_ROWS["train"][1])[:-9])


def mnli_wrong_header(tmp: Path) -> Path:
    header = ["gold_label", "sentence_1", "sentence2", "genre"]
    for part, rows in MNLI_ROWS.items():
        lines = ["\t".join(header)] + ["\t".join([g, p, h, genre]) for genre, g, p, h in rows]
        (tmp / f"{part}.tsv").write_text("\n".join(lines) + "\n")
    return tmp


def mnli_non_utf8(tmp: Path) -> Path:
    lines = [mnli_line(*r).encode() for r in MNLI_ROWS["dev_matched"]]
    lines[2] = lines[2].replace(b"museum", b"mus\xe9um")  # Latin-1, not UTF-8
    return write_mnli(tmp, dev_matched=b"\n".join(lines) + b"\n")


def mnli_empty_split(tmp: Path) -> Path:
    rows = [mnli_line(genre, "-", p, h) for genre, _, p, h in MNLI_ROWS["dev_mismatched"]]
    return write_mnli(tmp, dev_mismatched="\n".join(rows) + "\n")


def mnli_null_sentence(tmp: Path) -> Path:
    line = json.dumps({"genre": "fiction", "gold_label": "neutral", "sentence1": "She left.", "sentence2": None})
    return write_mnli(tmp, train=mnli_line(*MNLI_ROWS["train"][0]) + "\n" + line + "\n")


def mnli_meta_absent_from_training(tmp: Path) -> Path:
    return write_mnli(tmp)  # well-formed: the router below only has agents for the training genres


def encode_not_a_string(tmp: Path) -> Path:
    path = tmp / "pairs.jsonl"
    path.write_text(_lines([{"premise": "Ann left", "hypothesis": "x"}, {"premise": 7, "hypothesis": "y"}]))
    return path


def run_truncated_model(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    _truncate(run / "model.pt")
    return run


def run_empty_model(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    (run / "model.pt").write_bytes(b"")
    return run


def run_model_not_a_state_dict(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    torch.save([torch.zeros(2)], run / "model.pt")
    return run


@dataclass
class _Pickled:
    value: int = 1


def run_model_with_pickled_object(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    torch.save({"router.table": torch.zeros(1, 1, 2), "obj": _Pickled()}, run / "model.pt")
    return run


def run_truncated_record(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    _truncate(run / "routing_test.npz")
    return run


def run_record_bad_header(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    np.savez(run / "routing_test.npz", meta=np.zeros(3, dtype=np.int64), header=np.array('{"meta_names": ["a"'))
    return run


def run_record_meta_without_name(tmp: Path) -> Path:
    run = write_run(tmp / "run")
    header = json.dumps({"meta_names": ["a", "b"], "num_dispatch": 0, "layers": []})
    np.savez(run / "routing_test.npz", meta=np.array([0, 1, 5]), header=np.array(header))
    return run


# --------------------------------------------------------------------------- entry points
def sci(path: Path) -> Any:
    return load_sci(path)


def sci_coverage(path: Path) -> Any:
    return check_meta_coverage(load_sci(path))


def mnli(path: Path) -> Any:
    return load_multinli(path)


def mnli_route_mismatched(path: Path) -> Any:
    """Train-time router (one agent per training genre) evaluated on the mismatched genres."""
    dsd = encode_nli(load_multinli(path), WordTokenizer())
    return evaluate(tiny_model(len(MATCHED_GENRES)), dsd["validation_mismatched"], "genre")


def encode(path: Path) -> Any:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return encode_nli(Dataset.from_list(rows[1:]), WordTokenizer())


def analyze(run: Path) -> Any:
    """What ``nli-routing analyze RUN_DIR`` runs (the CLI turns the error into one line: see below)."""
    return analyze_run(run, out_dir=run.parent / "analysis")


#: (name, writer of the broken input into tmp_path, entry point, expected exception, message regex)
CORPUS: list[tuple[str, Callable[[Path], Path], Callable[[Path], Any], type[Exception], str]] = [
    # SCI: load_sci on a folder
    ("sci malformed JSON line", sci_malformed_json, sci, SCIFormatError,
     r"train\.jsonl:2: field <json>: malformed JSON at column \d+"),
    ("sci unterminated JSON array", sci_unterminated_array, sci, SCIFormatError,
     r"ci_latest_dev_joint\.json:\d+: field <json>: unterminated JSON array \(missing '\]'\)"),
    ("sci JSON nested too deeply", sci_deeply_nested, sci, SCIFormatError,
     r"validation\.jsonl:4: field <json>: malformed JSON: nested too deeply"),
    ("sci record not an object", sci_not_an_object, sci, SCIFormatError,
     r"test\.jsonl:3: field <record>: expected a JSON object, got list"),
    ("sci wrong field name", sci_wrong_field_name, sci, SCIFormatError,
     r"train\.jsonl:1: field 'hypothesis' is missing \(accepted names: hypothesis/sentence2\); "
     r"fields found: \[.*'hypo'"),
    ("sci unknown label", sci_unknown_label, sci, SCIFormatError,
     r"validation\.jsonl:2: field 'label' has unknown value 'neutral'; allowed: entails, contradicts, permits"),
    ("sci unknown signature", sci_unknown_signature, sci, SCIFormatError,
     r"test\.jsonl:1: field 'signature' has unknown value '\+\|\?'; allowed: \+\|-, "),
    ("sci label not a string", sci_label_not_a_string, sci, SCIFormatError,
     r"train\.jsonl:3: field 'label' must be a string, got int: 2"),
    ("sci non-UTF-8 bytes", sci_non_utf8, sci, SCIFormatError,
     r"train\.jsonl:2: field <line>: invalid UTF-8 byte\(s\) at column 20: b'\\xef"),
    ("sci empty split", sci_empty_split, sci, SCIFormatError,
     r"test\.jsonl: field <records>: split 'test' is empty \(no examples found\)"),
    ("sci empty JSON array", sci_empty_array, sci, SCIFormatError,
     r"ci_latest_test_joint\.json: field <records>: split 'test' is empty"),
    ("sci missing split file", sci_missing_split, sci, FileNotFoundError,
     r"missing SCI split file\(s\): \[.*validation\.jsonl'\]"),
    ("sci meta label absent from training", sci_meta_unseen_in_train, sci_coverage, ValueError,
     r"signature '\+\|\.5' appears 1 time in test but never in train"),
    # MultiNLI: load_multinli on a folder
    ("mnli malformed JSON line", mnli_malformed_json, mnli, MultiNLIFormatError,
     r"multinli_1\.0_train\.jsonl:2: field <json>: malformed JSON at column \d+"),
    ("mnli wrong header field", mnli_wrong_header, mnli, MultiNLIFormatError,
     r"train\.tsv:1: field 'premise' is missing from the header \(accepted names: sentence1/premise\); "
     r"columns found: \[.*'sentence_1'"),
    ("mnli non-UTF-8 bytes", mnli_non_utf8, mnli, MultiNLIFormatError,
     r"multinli_1\.0_dev_matched\.jsonl:3: field <line>: invalid UTF-8 byte\(s\) at column \d+: b'\\xe9"),
    ("mnli empty split (no gold labels)", mnli_empty_split, mnli, MultiNLIFormatError,
     r"multinli_1\.0_dev_mismatched\.jsonl: field <records>: split 'validation_mismatched' has no labelled "
     r"examples \(3 rows read, 3 without a gold label dropped\)"),
    ("mnli null sentence", mnli_null_sentence, mnli, MultiNLIFormatError,
     r"multinli_1\.0_train\.jsonl:2: field 'hypothesis' must be a string, got NoneType"),
    ("meta label absent from training at evaluation", mnli_meta_absent_from_training, mnli_route_mismatched,
     ValueError, r"meta labels \[6, 8\] are outside this router's 5 agents \(valid: 0\.\.4\); "
     r"a meta class unseen in training cannot be routed"),
    # encoding a hand-made data set
    ("encode non-string sentence", encode_not_a_string, encode, TypeError,
     r"encode_nli: split '', row 0, column 'premise': expected a string, got int: 7"),
    # a saved run read by `nli-routing analyze RUN_DIR`
    ("truncated model.pt", run_truncated_model, analyze, CheckpointError,
     r"run/model\.pt is truncated or not a checkpoint \(\d+ bytes\): "),
    ("empty model.pt", run_empty_model, analyze, CheckpointError,
     r"run/model\.pt is truncated or not a checkpoint \(0 bytes\): the file is empty"),
    ("model.pt not a state dict", run_model_not_a_state_dict, analyze, CheckpointError,
     r"run/model\.pt is not a state dict: it holds a list"),
    ("model.pt with pickled objects", run_model_with_pickled_object, analyze, CheckpointError,
     r"run/model\.pt holds objects that a weights-only load refuses"),
    ("truncated routing record", run_truncated_record, analyze, ValueError,
     r"run/routing_test\.npz is truncated or not a routing record \(\d+ bytes\): "),
    ("routing record with a broken header", run_record_bad_header, analyze, ValueError,
     r"run/routing_test\.npz: array 'header' is not a valid routing-record header"),
    ("routing record meta label without a name", run_record_meta_without_name, analyze, ValueError,
     r"run/routing_test\.npz: meta label 5 has no name \(only 2 names\)"),
]


@pytest.mark.parametrize(("name", "write", "entry", "error", "pattern"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_corpus(
    tmp_path: Path,
    name: str,
    write: Callable[[Path], Path],
    entry: Callable[[Path], Any],
    error: type[Exception],
    pattern: str,
) -> None:
    path = write(tmp_path)
    with pytest.raises(error, match=pattern) as info:
        entry(path)
    assert info.type.__module__.split(".")[0] in ("nli_routing", "builtins"), f"{name}: raised {info.type}"
    assert "torch" not in info.type.__module__ and info.value.__cause__ is None, name


def test_cli_reports_bad_input_in_one_line_without_a_traceback(tmp_path: Path, capsys) -> None:
    run = run_truncated_model(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli(["analyze", str(run), "--out", str(tmp_path / "analysis")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nli-routing analyze: error: ") and "model.pt is truncated or not a checkpoint" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- counted fallbacks
def test_empty_sentences_are_kept_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{**SCI_ROWS[0], "premise": "   "}, {**SCI_ROWS[1], "hypothesis": ""}, SCI_ROWS[2]]
    root = write_sci(tmp_path, train=_lines(rows))
    with caplog.at_level(logging.INFO):
        dsd, report = load_sci(root, return_report=True)
        encoded, enc_report = encode_nli(dsd, WordTokenizer(), return_report=True)
    assert report["train"] == {"rows": 3, "empty_premise": 1, "empty_hypothesis": 1, "file": str(root / "train.jsonl")}
    assert report["test"]["empty_premise"] == 0
    assert "kept 1 empty premise(s) and 1 empty hypothesis(es) of 3 rows" in caplog.text and "line 1" in caplog.text
    assert "1 premises and 1 hypotheses without tokens kept" in caplog.text
    assert encoded["train"]["premise_ids"][0] == [] and encoded["train"]["hypothesis_ids"][1] == []
    assert enc_report["train"] == {"rows": 3, "premise_truncated": 0, "hypothesis_truncated": 0}
    logits = evaluate(tiny_model(len(dsd["train"].features["signature"].names)), encoded["train"], "signature")
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_long_sentences_are_truncated_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nli_routing.models.embeddings import load_word_vectors

    long = " ".join(["the manager managed to leave"] * 20_000)  # 100k words
    root = write_sci(tmp_path, test=_lines([{**SCI_ROWS[0], "premise": long}, SCI_ROWS[1]]))
    dsd = load_sci(root, splits=["test"])
    vectors = load_word_vectors("random:8")  # the packaged MiniLM tokenizer
    with caplog.at_level(logging.INFO, logger="nli_routing.data.encoding"):
        encoded, report = encode_nli(dsd, vectors.tokenizer, max_length=16, return_report=True)
    assert report["test"] == {"rows": 2, "premise_truncated": 1, "hypothesis_truncated": 0}
    warnings = [r for r in caplog.records if r.name == "nli_routing.data.encoding" and r.levelno == logging.WARNING]
    assert warnings and "1 premises and 0 hypotheses of 2 rows truncated at 16 tokens" in warnings[0].getMessage()
    assert [len(x) for x in encoded["test"]["premise_ids"]] == [16, 4]
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=13), vectors.weight, vectors.pad_id).eval()
    assert torch.isfinite(evaluate(model, encoded["test"], "signature")).all()


def test_unlabelled_multinli_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = MNLI_ROWS["train"] + [("slate", "-", "Critics disagreed.", "Everyone agreed."),
                                 ("government", "neutral", "", "Taxes rose.")]
    root = write_mnli(tmp_path, train="".join(mnli_line(*r) + "\n" for r in rows))
    dsd, report = load_multinli(root, return_report=True)
    assert report["train"]["rows"] == 3 and report["train"]["dropped_no_gold"] == 1
    assert report["train"]["empty_premise"] == 1 and report["train"]["empty_hypothesis"] == 0
    assert report["validation_mismatched"]["dropped_no_gold"] == 1 and len(dsd["validation_mismatched"]) == 2


# --------------------------------------------------------------------------- issue 17: inference and recipe flags
ROOT = Path(__file__).resolve().parents[1]
PAIR = {"premise": "Ann managed to leave.", "hypothesis": "Ann left."}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny trained wp-signature run folder (config, weights, tokenizer)."""
    from nli_routing.experiments.nli import DataArgs, prepare_sci, run_method
    from nli_routing.training.loop import TrainConfig

    folder = tmp_path_factory.mktemp("bad_inference") / "wp-signature"
    run_method("wp-signature", prepare_sci(DataArgs(max_train_samples=60, allow_unseen_meta=True)), NLIModelConfig(classifier_hidden=8),
               TrainConfig(epochs=1, batch_size=32, seed=0), 3, folder)
    return folder


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


PAIR_FLAGS = ["--premise", "a", "--hypothesis", "b", "--meta", "+|-"]


def _bytes(tmp: Path, name: str, raw: bytes) -> str:
    path = tmp / name
    path.write_bytes(raw)
    return str(path)


def _broken(tmp: Path, model: Path, name: str, edit: Callable[[Path], Any]) -> str:
    """A copy of the saved model folder, damaged by ``edit``."""
    import shutil

    out = tmp / name
    shutil.copytree(model, out)
    edit(out)
    return str(out)


def _flip_weights(folder: Path) -> None:
    """Flip one byte of the tensor data (the safetensors header still parses)."""
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))


def _config(update: dict, drop: str | None = None) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(update)
        cfg.pop(drop, None)
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


def _no_tokenizer(tmp: Path, model: Path) -> str:
    import shutil

    out = tmp / "no_tokenizer"
    shutil.copytree(model, out)
    for f in out.glob("tokenizer*"):
        f.unlink()
    return str(out)


#: (name, argv builder (tmp, model) -> argv for ``nli-routing``, or a callable run directly, message pattern)
INFERENCE_CASES: list[tuple[str, Callable[[Path, Path], Any], str]] = [
    ("predict-missing-meta", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b"],
     r"pair 0: this model routes on 'signature' and the pair has none.*--meta_fallback"),
    ("predict-unknown-meta", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b", "--meta", "x|y"],
     r"pair 0: unknown signature 'x\|y'; known values: \["),
    ("predict-meta-index-out-of-range", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b",
                                                      "--meta", "99"], r"pair 0: meta index 99 outside 0\.\."),
    ("predict-unknown-fallback", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b",
                                               "--meta_fallback", "nope"], r"meta_fallback: unknown signature 'nope'"),
    ("predict-unknown-format", lambda t, m: ["predict", str(m), "--input", _write(t, "pairs.txt", "x\n")],
     r"pairs\.txt: unknown input format '\.txt'"),
    ("predict-bad-json-line", lambda t, m: ["predict", str(m), "--input", _write(t, "p.jsonl", json.dumps(PAIR) + "\n{oops\n")],
     r"p\.jsonl, line 2: not JSON"),
    ("predict-json-not-an-object", lambda t, m: ["predict", str(m), "--input", _write(t, "l.jsonl", "[1, 2]\n")],
     r"l\.jsonl, line 1: expected a JSON object, got list"),
    ("predict-csv-missing-column", lambda t, m: ["predict", str(m), "--input", _write(t, "p.csv", "premise,meta\na,+|-\n")],
     r"p\.csv, line 1: header lacks column\(s\) \['hypothesis'\]"),
    ("predict-csv-extra-cells", lambda t, m: ["predict", str(m), "--input",
                                              _write(t, "x.csv", "premise,hypothesis,signature\na,b,+|-\nc,d,+|-,extra\n")],
     r"x\.csv, line 3: 4 cells for 3 header columns"),
    ("predict-empty-file", lambda t, m: ["predict", str(m), "--input", _write(t, "e.jsonl", "\n\n")], r"e\.jsonl: no pairs"),
    ("predict-missing-file", lambda t, m: ["predict", str(m), "--input", str(t / "absent.jsonl")],
     r"input file .*absent\.jsonl does not exist"),
    ("predict-no-premise-field", lambda t, m: ["predict", str(m), "--input", _write(t, "n.jsonl", '{"hypothesis": "b"}\n')],
     r"pair 0: no 'premise' \(or 'text'\) field"),
    ("predict-premise-not-a-string", lambda t, m: ["predict", str(m), "--input",
                                                   _write(t, "s.jsonl", '{"premise": 3, "hypothesis": "b"}\n')],
     r"pair 0: field 'premise' must be a string, got int"),
    ("predict-input-and-premise", lambda t, m: ["predict", str(m), "--input", "x.jsonl", "--premise", "a"],
     r"either --input FILE or --premise"),
    ("predict-batch-size-0", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b", "--batch_size", "0"],
     r"--batch_size: must be >= 1, got 0"),
    ("predict-not-a-model-folder", lambda t, m: ["predict", str(t), "--premise", "a", "--hypothesis", "b"],
     r"has no config\.json: not a saved model folder"),
    ("predict-no-tokenizer", lambda t, m: ["predict", _no_tokenizer(t, m), "--premise", "a", "--hypothesis", "b"],
     r"has no tokenizer files .*save_pretrained\(folder, tokenizer=tokenizer\)"),
    ("app-bad-port", lambda t, m: ["app", str(m), "--port", "0"], r"--port must be in 1\.\.65535, got 0"),
    # issue 31: inference input
    ("predict-null-premise", lambda t, m: ["predict", str(m), "--input", _write(t, "n.jsonl", '{"premise": null, "hypothesis": "b", "signature": "+|-"}\n')],
     r"pair 0: field 'premise' is null"),
    ("predict-empty-pair-file", lambda t, m: ["predict", str(m), "--input", _write(t, "e2.jsonl", '{"premise": "", "hypothesis": "", "signature": "+|-"}\n')],
     r"pair 0: premise and hypothesis are both empty"),
    ("predict-empty-pair-flags", lambda t, m: ["predict", str(m), "--premise", "", "--hypothesis", "  ", "--meta=+|-"],
     r"pair 0: premise and hypothesis are both empty"),
    ("predict-signature-and-meta-disagree", lambda t, m: ["predict", str(m), "--input", _write(
        t, "d.jsonl", '{"premise": "a", "hypothesis": "b", "signature": "+|-", "meta": "-|+"}\n')],
     r"pair 0: 'signature' is '\+\|-' but 'meta' is '-\|\+'"),
    ("predict-binary-jsonl", lambda t, m: ["predict", str(m), "--input", _bytes(t, "b.jsonl", b"\x00\xff\xfe\x00binary\n")],
     r"b\.jsonl: not UTF-8 text \(byte b'\\xff' at offset 1\)"),
    ("predict-binary-csv", lambda t, m: ["predict", str(m), "--input", _bytes(t, "b.csv", b"premise,hypothesis\n\xff\xfe,\x00\n")],
     r"b\.csv: not UTF-8 text"),
    ("predict-input-is-a-folder", lambda t, m: ["predict", str(m), "--input", str(t)], r"input file .* is a folder"),
    ("predict-output-is-a-folder", lambda t, m: ["predict", str(m), *PAIR_FLAGS, "--output", str(t)],
     r"--output .*: is a folder; give a \.jsonl file"),
    ("predict-output-under-a-file", lambda t, m: ["predict", str(m), *PAIR_FLAGS, "--output", _write(t, "pf", "x") + "/o.jsonl"],
     r"--output .*pf/o\.jsonl: a parent of it is a file"),
    ("predict-json-object-not-a-list", lambda t, m: ["predict", str(m), "--input", _write(t, "o.json", '{"premise": "a"}')],
     r"pair 0: no 'hypothesis' \(or 'text_pair'\) field"),
    ("predict-json-malformed", lambda t, m: ["predict", str(m), "--input", _write(t, "mal.json", '[{"premise": "a",')],
     r"mal\.json, line 1: not JSON"),
    ("predict-json-list-of-numbers", lambda t, m: ["predict", str(m), "--input", _write(t, "nums.json", "[1, 2]")],
     r"nums\.json, line 1: expected a JSON object, got list"),
    ("predict-hypothesis-only", lambda t, m: ["predict", str(m), "--hypothesis", "b"], r"give either --input FILE or --premise"),
    ("predict-premise-only", lambda t, m: ["predict", str(m), "--premise", "a"], r"--premise needs --hypothesis"),
    ("predict-no-input", lambda t, m: ["predict", str(m)], r"give either --input FILE or --premise"),
    ("predict-hypothesis-a-list", lambda t, m: ["predict", str(m), "--input", _write(
        t, "hl.jsonl", '{"premise": "a", "hypothesis": ["b"], "signature": "+|-"}\n')], r"pair 0: field 'hypothesis' must be a string, got list"),
    ("predict-meta-a-list", lambda t, m: ["predict", str(m), "--input", _write(
        t, "mn.jsonl", '{"premise": "a", "hypothesis": "b", "signature": [1]}\n')], r"pair 0: a meta value is a class name or index, got list"),
    ("predict-meta-a-float", lambda t, m: ["predict", str(m), "--input", _write(
        t, "mf.jsonl", '{"premise": "a", "hypothesis": "b", "meta": 1.5}\n')], r"pair 0: a meta value is a class name or index, got float"),
    ("predict-meta-negative-index", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b", "--meta", "-1"],
     r"pair 0: unknown signature '-1'; known values"),
    ("predict-csv-header-only", lambda t, m: ["predict", str(m), "--input", _write(t, "h.csv", "premise,hypothesis,signature\n")],
     r"h\.csv: no pairs in the file"),
    ("predict-csv-empty", lambda t, m: ["predict", str(m), "--input", _write(t, "z.csv", "")],
     r"z\.csv, line 1: header lacks column\(s\) \['premise', 'hypothesis'\]"),
    ("predict-tsv-without-meta", lambda t, m: ["predict", str(m), "--input", _write(t, "p.tsv", "premise\thypothesis\na\tb\n")],
     r"pair 0: this model routes on 'signature' and the pair has none"),
    ("predict-fallback-index-out-of-range", lambda t, m: ["predict", str(m), "--premise", "a", "--hypothesis", "b",
                                                          "--meta_fallback", "99"], r"meta_fallback: meta index 99 outside 0\.\.12"),
    ("predict-batch-size-negative", lambda t, m: ["predict", str(m), *PAIR_FLAGS, "--batch_size", "-1"],
     r"argument --batch_size: must be >= 1, got -1"),
    ("predict-batch-size-not-a-number", lambda t, m: ["predict", str(m), *PAIR_FLAGS, "--batch_size", "x"],
     r"argument --batch_size: invalid _positive_int value: 'x'"),
    # issue 31: model folders (the weights' checksum, sizes, config)
    ("predict-model-folder-missing", lambda t, m: ["predict", str(t / "nope"), *PAIR_FLAGS],
     r"nope is neither a local folder nor a Hub model that can be downloaded"),
    ("predict-weights-corrupted", lambda t, m: ["predict", _broken(t, m, "flip", _flip_weights), *PAIR_FLAGS],
     r"flip/model\.safetensors: SHA-256 \w+\.\.\. does not match config\.json's weights_sha256"),
    ("predict-weights-truncated", lambda t, m: ["predict", _broken(t, m, "trunc", lambda f: _truncate(f / "model.safetensors")), *PAIR_FLAGS],
     r"trunc/model\.safetensors is truncated or not a safetensors file"),
    ("predict-weights-missing", lambda t, m: ["predict", _broken(t, m, "nowts", lambda f: (f / "model.safetensors").unlink()), *PAIR_FLAGS],
     r"nowts has no model\.safetensors"),
    ("predict-weights-empty", lambda t, m: ["predict", _broken(t, m, "emptyw", lambda f: (f / "model.safetensors").write_bytes(b"")), *PAIR_FLAGS],
     r"emptyw/model\.safetensors is truncated or not a safetensors file \(0 bytes\)"),
    ("predict-weights-of-another-model", lambda t, m: ["predict", _broken(t, m, "sha", _config({"weights_sha256": "0" * 64})), *PAIR_FLAGS],
     r"sha/model\.safetensors: SHA-256 \w+\.\.\. does not match config\.json's weights_sha256 000000000000"),
    ("predict-config-sizes-not-the-weights", lambda t, m: ["predict", _broken(t, m, "size", _config({"classifier_hidden": 16}, drop="weights_sha256")), *PAIR_FLAGS],
     r"size: config\.json and model\.safetensors do not describe the same model: size mismatch for classifier"),
    ("predict-config-not-json", lambda t, m: ["predict", _broken(t, m, "cfgjson", lambda f: (f / "config.json").write_text("{oops")), *PAIR_FLAGS],
     r"cfgjson/config\.json is truncated or not JSON"),
    ("predict-config-not-an-object", lambda t, m: ["predict", _broken(t, m, "cfglist", lambda f: (f / "config.json").write_text("[]")), *PAIR_FLAGS],
     r"cfglist/config\.json: expected a JSON object, got list"),
    ("predict-config-without-model-type", lambda t, m: ["predict", _broken(t, m, "nomt", _config({}, drop="model_type")), *PAIR_FLAGS],
     r"nomt/config\.json: field 'model_type' is missing; a routed model has one of \["),
    ("predict-config-unknown-model-type", lambda t, m: ["predict", _broken(t, m, "umt", _config({"model_type": "bert"})), *PAIR_FLAGS],
     r"umt/config\.json: field 'model_type' is 'bert', not a routed model kind"),
    ("predict-config-num-meta-0", lambda t, m: ["predict", _broken(t, m, "nm0", _config({"num_meta": 0})), *PAIR_FLAGS],
     r"num_meta must be >= 1, got 0"),
    ("predict-config-unknown-route", lambda t, m: ["predict", _broken(t, m, "rb", _config({"route": "bogus"})), *PAIR_FLAGS],
     r"route must be one of \('none', 'wp'"),
    # issue 31: the server, the app, the other commands
    ("serve-max-batch-0", lambda t, m: ["serve", str(m), "--max_batch", "0"], r"--max_batch must be >= 1, got 0"),
    ("serve-queue-size-0", lambda t, m: ["serve", str(m), "--queue_size", "0"], r"--queue_size must be >= 1, got 0"),
    ("serve-port-0", lambda t, m: ["serve", str(m), "--port", "0"], r"--port must be in 1\.\.65535, got 0"),
    ("serve-port-too-big", lambda t, m: ["serve", str(m), "--port", "70000"], r"--port must be in 1\.\.65535, got 70000"),
    ("serve-negative-wait", lambda t, m: ["serve", str(m), "--max_wait_ms", "-1"], r"--max_wait_ms must be >= 0, got -1"),
    ("serve-model-missing", lambda t, m: ["serve", str(t / "nope")], r"nope is neither a local folder nor a Hub model"),
    ("serve-unknown-fallback", lambda t, m: ["serve", str(m), "--meta_fallback", "nope"], r"meta_fallback: unknown signature 'nope'"),
    ("serve-corrupted-weights", lambda t, m: ["serve", _broken(t, m, "flip", _flip_weights)], r"does not match config\.json's weights_sha256"),
    ("app-model-missing", lambda t, m: ["app", str(t / "nope")], r"nope is neither a local folder nor a Hub model"),
    ("app-port-too-big", lambda t, m: ["app", str(m), "--port", "70000"], r"--port must be in 1\.\.65535, got 70000"),
    ("app-unknown-fallback", lambda t, m: ["app", str(m), "--meta_fallback", "nope"], r"meta_fallback: unknown signature 'nope'"),
    ("analyze-run-missing", lambda t, m: ["analyze", str(t / "nope")], r"run folder .*nope does not exist"),
    ("analyze-not-a-run", lambda t, m: ["analyze", str(t)], r"routing_test\.npz does not exist; routing records in .*: none"),
    ("analyze-dpi-0", lambda t, m: ["analyze", str(m), "--dpi", "0"], r"--dpi must be >= 1, got 0"),
    ("analyze-unknown-split", lambda t, m: ["analyze", str(m), "--split", "bogus"],
     r"routing_bogus\.npz does not exist; routing records in .*: \['routing_test\.npz', 'routing_validation\.npz'\]"),
    ("analyze-unknown-grouping", lambda t, m: ["analyze", str(m), "--by", "bogus"], r"argument --by: invalid choice: 'bogus'"),
    ("convert-run-missing", lambda t, m: ["convert", str(t / "nope"), str(t / "conv")],
     r"nope/model_config\.json does not exist: not a run folder of an older nli_routing"),
    ("generate-sci-out-is-a-file", lambda t, m: ["generate-sci", "--out", _write(t, "gf", "x")],
     r"--out .*gf: a file is in the way"),
    ("generate-sci-no-rows", lambda t, m: ["generate-sci", "--out", str(t / "g"), "--n_test", "0"], r"--n_test must be >= 1, got 0"),
    ("unknown-command", lambda t, m: ["bogus"], r"argument command: invalid choice: 'bogus'"),
]


@pytest.mark.parametrize(("name", "argv", "pattern"), INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES])
def test_inference_bad_input(name, argv, pattern, saved_model: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(argv(tmp_path, saved_model))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    last = err.strip().splitlines()[-1]  # (argparse's own errors print the usage above it)
    assert "Traceback" not in err and last.startswith("nli-routing") and ": error: " in last, err
    assert re.search(pattern, last), err


def test_pipeline_refuses_input_that_is_not_a_pair(saved_model: Path) -> None:
    import nli_routing.inference.pipeline  # noqa: F401  (registers routed-nli)
    from transformers import pipeline

    nli = pipeline("routed-nli", model=str(saved_model))
    with pytest.raises(ValueError, match=r"routed-nli takes a dict with text and text_pair .* got str"):
        nli("Ann managed to leave.")
    with pytest.raises(ValueError, match=r"pair 0: no 'hypothesis' \(or 'text_pair'\) field"):
        nli({"text": "Ann managed to leave.", "meta": "+|-"})


#: (recipe, flags, message): every recipe validates its flags when it parses them (one line, exit 2)
RECIPE_CASES = [
    ("sci_wp_dispatch.py", ["--rho", "5"], r"rho must be in \[-1, 1\], got 5"),
    ("finetune_routed_transformer.py", ["--rho", "-2"], r"rho must be in \[-1, 1\], got -2"),
    ("sci_wp_dispatch.py", ["--epochs", "0"], r"epochs must be >= 1, got 0"),
    ("sci_wp_dispatch.py", ["--wp_depth", "0"], r"wp_depth must be >= 1, got 0"),
    ("sci_wp_dispatch.py", ["--batch_size", "0"], r"batch_size must be >= 1, got 0"),
    ("sci_wp_dispatch.py", ["--exploration", "nope"], r"exploration must be one of \['high', 'low', 'med', 'none', 'thesis-high', 'thesis-low', 'thesis-med'\] or START/ANNEAL/EVERY/FLOOR, got 'nope'"),
    ("sci_wp_dispatch.py", ["--learner_args", "foo=1"], r"learner 'qlearning'.*'foo'"),
    ("sci_wp_dispatch.py", ["--dispatch_k", "0"], r"dispatch_k must be >= 1, got 0"),
    ("sci_wp_dispatch.py", ["--max_train_samples", "0"], r"max_train_samples must be >= 1, got 0"),
    ("sci_wp_dispatch.py", ["--lr", "-1"], r"lr must be >= 0, got -1"),
    # issue 29: the capacity balance and the dispatchers' new settings, two bad values each
    ("sci_wp_dispatch.py", ["--router_balance_share", "0"], r"router_balance_share must be in \(0, 1\], got 0.0"),
    ("sci_wp_dispatch.py", ["--router_balance_share", "1.5"], r"router_balance_share must be in \(0, 1\], got 1.5"),
    ("sci_wp_dispatch.py", ["--router_balance_rate", "-1"], r"router_balance_rate must be a number >= 0, got -1.0"),
    ("sci_wp_dispatch.py", ["--router_balance_rate", "nan"], r"router_balance_rate must be a number >= 0, got nan"),
    ("sci_wp_dispatch.py", ["--dispatch_balance", "-1"], r"dispatch_balance must be >= 0, got -1.0"),
    ("sci_wp_dispatch.py", ["--dispatch_balance", "nan"], r"dispatch_balance must be >= 0, got nan"),
    ("sci_wp_dispatch.py", ["--dispatch_target", "bogus"], r"dispatch_target must be one of \('reward', 'best-agent', 'meta', 'em', 'mixture', 'auto'\)"),
    ("sci_wp_dispatch.py", ["--dispatch_target", "meta", "--methods", "wp-basic"], r"wp-basic: --dispatch_target meta .* two-stage"),
    ("sci_wp_dispatch.py", ["--dispatch_agent_optimizer", "adam"], r"dispatch_agent_optimizer must be one of \('routers', 'blocks'\)"),
    ("sci_wp_dispatch.py", ["--dispatch_agent_optimizer", ""], r"dispatch_agent_optimizer must be one of \('routers', 'blocks'\)"),
    ("finetune_routed_transformer.py", ["--num_blocks", "0"], r"num_blocks must be >= 1, got 0"),
    ("finetune_routed_transformer.py", ["--max_length", "2"], r"max_length must be >= 4, got 2"),
    ("image_mtl.py", ["--per_class", "0"], r"per_class must be >= 1, got 0"),
    ("multinli.py", ["--max_eval_samples", "0"], r"max_eval_samples must be >= 1, got 0"),
    ("multinli.py", ["--wp_width", "0"], r"wp_width must be >= 1, got 0"),
    # issue 32: the thesis' options, two bad values each
    ("sci_wp_dispatch.py", ["--exploration", "0.5/0.25/x/0.01"], r"exploration schedule '0.5/0.25/x/0.01': expected START/ANNEAL/EVERY/FLOOR"),
    ("sci_wp_dispatch.py", ["--exploration", "0.5/2/5/0.01"], r"exploration schedule '0.5/2/5/0.01': anneal must be in \(0, 1\], got 2.0"),
    ("sci_wp_dispatch.py", ["--router_lr_ratio", "nan"], r"router_lr_ratio must be a number > 0 .*got nan"),
    ("sci_wp_dispatch.py", ["--router_optimizer", "bogus"], r"router_optimizer must be one of \('sgd', 'adam', 'rmsprop', 'adagrad'\), got 'bogus'"),
    ("image_mtl.py", ["--router_optimizer", ""], r"router_optimizer must be one of \('sgd', 'adam', 'rmsprop', 'adagrad'\), got ''"),
    ("finetune_routed_transformer.py", ["--block_optimizer", "lbfgs"], r"block_optimizer must be one of .*got 'lbfgs'"),
    ("sci_wp_dispatch.py", ["--dispatch_cbow_pool", "max"], r"dispatch_cbow_pool must be one of \('mean', 'sum'\), got 'max'"),
    ("sci_wp_dispatch.py", ["--dispatch_cbow_pool", ""], r"dispatch_cbow_pool must be one of \('mean', 'sum'\), got ''"),
    ("sci_wp_dispatch.py", ["--meta_keyword_mode", "words"], r"meta_keyword_mode must be one of \('vector', 'tokens'\), got 'words'"),
    ("sci_wp_dispatch.py", ["--meta_keyword", "--meta_keyword_mode", "tokens", "--route", "wp"],
     r"meta_keyword_mode 'tokens' is the unrouted baseline's keyword .*not route 'wp'"),
    ("sci_wp_dispatch.py", ["--preset", "bogus"], r"argument --preset: invalid choice: 'bogus'|--preset must be one of \['thesis'\]"),
    ("image_mtl.py", ["--preset", "nope"], r"argument --preset: invalid choice: 'nope'|--preset must be one of \['thesis'\]"),
    ("sci_wp_dispatch.py", ["--classifier_paths", "tree"], r"classifier_paths must be one of \('per-layer', 'set'\), got 'tree'"),
    ("multinli.py", ["--classifier_paths", ""], r"classifier_paths must be one of \('per-layer', 'set'\), got ''"),
    # issue 31: every flag checked when parsed (a value, a name from a list, a path)
    ('sci_wp_dispatch.py', ['--variant', 'bogus'], r"--variant must be one of \('joint', 'disjoint', 'mismatch', 'nested'\), got 'bogus'"),
    ('sci_wp_dispatch.py', ['--embeddings', '/nonexistent/glove.txt'], r'--embeddings /nonexistent/glove\.txt: no such file'),
    ('sci_wp_dispatch.py', ['--embeddings', 'random:x'], r"--embeddings random:x: bad random spec; expected 'random:<dim>\[:<seed>\]'"),
    ('sci_wp_dispatch.py', ['--embeddings', 'random:0'], r'--embeddings random:0: dim must be positive, got 0'),
    ('sci_wp_dispatch.py', ['--num_meta', '2'], r'--num_meta 2: the number of meta classes is set from the data'),
    ('sci_wp_dispatch.py', ['--nested_dir', '/nonexistent/nested'], r'--nested_dir /nonexistent/nested: not a folder'),
    ('sci_wp_dispatch.py', ['--data_dir', '/nonexistent/sci'], r'--data_dir /nonexistent/sci: does not exist'),
    ('sci_wp_dispatch.py', ['--data_dir', 'nonexistent/sci'], r'--data_dir nonexistent/sci: does not exist \(relative to /'),
    ('sci_wp_dispatch.py', ['--methods', 'bogus'], r"unknown method 'bogus'; choose from \['cbow'"),
    ('sci_wp_dispatch.py', ['--router', 'bogus'], r"router must be one of \('tabular', "),
    ('sci_wp_dispatch.py', ['--learner', 'bogus'], r"unknown learner 'bogus'; registered learners: \["),
    ('sci_wp_dispatch.py', ['--dispatch', 'bogus'], r"--dispatch must be one of \('signature', "),
    ('sci_wp_dispatch.py', ['--dispatch_input', 'bogus'], r"dispatch_input must be 'premise', 'pair' or 'auto', got 'bogus'"),
    ('sci_wp_dispatch.py', ['--dispatch_encoder', 'bogus'], r"dispatch_encoder must be one of \('cbow', "),
    ('sci_wp_dispatch.py', ['--dispatch_learner', 'bogus'], r"dispatch_learner: unknown learner 'bogus'"),
    ('sci_wp_dispatch.py', ['--dispatch_alpha', 'nan'], r'dispatch_alpha must be in \[0, 1\], got nan'),
    ('sci_wp_dispatch.py', ['--dispatch_hidden', '0'], r'dispatch_hidden must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--dispatch_bottleneck', '0'], r'dispatch_bottleneck must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--stage2_epochs', '0'], r'stage2_epochs must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--nested_epochs', '0'], r'nested_epochs must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--two_stage'], r'--two_stage needs --dispatch'),
    ('sci_wp_dispatch.py', ['--pair_features', 'bogus'], r"pair_features must be one of \('concat', 'match'\), got 'bogus'"),
    ('sci_wp_dispatch.py', ['--block_optimizer', 'bogus'], r"block_optimizer must be one of \('sgd', 'adam', 'rmsprop', 'adagrad'\), got 'bogus'"),
    ('sci_wp_dispatch.py', ['--reward', 'bogus'], r"reward must be one of \('correct', 'neg_loss'\), got 'bogus'"),
    ('sci_wp_dispatch.py', ['--route', 'bogus'], r"route must be one of \('none', 'wp', "),
    ('sci_wp_dispatch.py', ['--wp_activation', 'bogus'], r"wp_activation must be one of \['gelu', 'identity', 'relu', 'tanh'\], got 'bogus'"),
    ('sci_wp_dispatch.py', ['--wp_gate_init', 'nan'], r'wp_gate_init must be a finite number, got nan'),
    ('sci_wp_dispatch.py', ['--pool', 'bogus'], r"pool must be 'sum' or 'mean', got 'bogus'"),
    ('sci_wp_dispatch.py', ['--classifier_init', 'bogus'], r"classifier_init must be one of \('torch', 'he'\), got 'bogus'"),
    ('sci_wp_dispatch.py', ['--route', 'classifier', '--classifier_layers', '0'], r"classifier_layers must be >= 1 with route 'classifier', got 0"),
    ('sci_wp_dispatch.py', ['--max_length', '0'], r'max_length must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--dispatch_k', '-3'], r'dispatch_k must be >= 1, got -3'),
    ('sci_wp_dispatch.py', ['--batch_size', '-5'], r'batch_size must be >= 1, got -5'),
    ('sci_wp_dispatch.py', ['--eval_batch_size', '0'], r'eval_batch_size must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--epochs', 'x'], r"argument --epochs: invalid int value: 'x'"),
    ('sci_wp_dispatch.py', ['--seed', 'x'], r"argument --seed: invalid int value: 'x'"),
    ('sci_wp_dispatch.py', ['--lr', 'nan'], r'lr must be >= 0, got nan'),
    ('sci_wp_dispatch.py', ['--momentum', '-1'], r'momentum must be in \[0, 1\), got -1.0'),
    ('sci_wp_dispatch.py', ['--momentum', '1'], r'momentum must be in \[0, 1\), got 1.0'),
    ('sci_wp_dispatch.py', ['--weight_decay', '-1'], r'weight_decay must be >= 0, got -1.0'),
    ('sci_wp_dispatch.py', ['--max_grad_norm', '-1'], r'max_grad_norm must be > 0 \(or None to not clip\), got -1.0'),
    ('sci_wp_dispatch.py', ['--router_lr_ratio', '0'], r'router_lr_ratio must be a number > 0 \(router lr = ratio x block lr\), got 0.0'),
    ('sci_wp_dispatch.py', ['--router_data_fraction', '2'], r'router_data_fraction must be in \[0, 1\), got 2.0'),
    ('sci_wp_dispatch.py', ['--explore_kappa', '-1'], r'explore_kappa must be >= 0 \(0: off\), got -1.0'),
    ('sci_wp_dispatch.py', ['--router_init', 'nan'], r'router_init must be a finite number, got nan'),
    ('sci_wp_dispatch.py', ['--rho', 'nan'], r'rho must be in \[-1, 1\], got nan'),
    ('sci_wp_dispatch.py', ['--num_subrouters', '0'], r'num_subrouters must be >= 1, got 0'),
    ('sci_wp_dispatch.py', ['--exploration', ''], r"exploration must be one of \[.*\] or START/ANNEAL/EVERY/FLOOR, got ''"),
    ('sci_wp_dispatch.py', ['--learner_args', 'notkv'], r"learner argument 'notkv' is not of the form key=value"),
    ('sci_wp_dispatch.py', ['--collapse_threshold', '2'], r'collapse_threshold must be in \(0, 1\], got 2.0'),
    ('sci_wp_dispatch.py', ['--collapse_warmup', '-1'], r'collapse_warmup must be >= 0 epochs, got -1'),
    ('sci_wp_dispatch.py', ['--keep_checkpoints', '-1'], r'keep_checkpoints must be >= 1, got -1'),
    ('sci_wp_dispatch.py', ['--checkpoint_every', '-1'], r'checkpoint_every must be >= 0, got -1'),
    ('sci_wp_dispatch.py', ['--resume_from', '/nonexistent/step_5'], r'--resume_from /nonexistent/step_5: not a complete checkpoint \(no loop_state\.json in it\)'),
    ('sci_wp_dispatch.py', ['--log_with', 'bogus'], r"log_with: unknown tracker\(s\) \['bogus'\]"),
    ('sci_wp_dispatch.py', ['--hub_model_id', 'me/sci'], r'--hub_model_id needs --push_to_hub'),
    ('sci_wp_dispatch.py', ['--push_to_hub'], r'--push_to_hub: the Hub is unreachable with HF_HUB_OFFLINE=1'),
    ('sci_wp_dispatch.py', ['--unknown_flag', '1'], r"Some specified arguments are not used by the HfArgumentParser: \['--unknown_flag', '1'\]"),
    ('finetune_routed_transformer.py', ['--route', 'bogus'], r"argument --route: invalid choice: 'bogus'"),
    ('finetune_routed_transformer.py', ['--pooling', 'bogus'], r"argument --pooling: invalid choice: 'bogus'"),
    ('finetune_routed_transformer.py', ['--lora_rank', '0'], r'lora_rank must be >= 1, got 0'),
    ('finetune_routed_transformer.py', ['--lora_alpha', '0'], r'lora_alpha must be > 0 .*got 0.0'),
    ('finetune_routed_transformer.py', ['--noise_std', '-1'], r'noise_std must be >= 0, got -1.0'),
    ('finetune_routed_transformer.py', ['--dropout', '1.5'], r'dropout must be in \[0, 1\), got 1.5'),
    ('finetune_routed_transformer.py', ['--variant', 'bogus'], r"--variant must be one of \('joint', "),
    ('finetune_routed_transformer.py', ['--data_dir', '/nonexistent/sci'], r'--data_dir /nonexistent/sci: does not exist'),
    ('finetune_routed_transformer.py', ['--model_name_or_path', '/nonexistent/minilm'], r'--model_name_or_path /nonexistent/minilm: no such folder'),
    ('finetune_routed_transformer.py', ['--max_eval_samples', '0'], r'max_eval_samples must be >= 1, got 0'),
    ('finetune_routed_transformer.py', ['--epochs', '0'], r'epochs must be >= 1, got 0'),
    ('finetune_routed_transformer.py', ['--router', 'bogus'], r"router must be one of \('tabular', "),
    ('finetune_routed_transformer.py', ['--learner', 'bogus'], r"unknown learner 'bogus'"),
    ('finetune_routed_transformer.py', ['--exploration', 'bogus'], r"exploration must be one of \['high', .*, got 'bogus'"),
    ('finetune_routed_transformer.py', ['--router_balance_share', '2'], r'router_balance_share must be in \(0, 1\], got 2.0'),
    ('finetune_routed_transformer.py', ['--route', 'classifier', '--classifier_layers', '0'], r'classifier_layers'),
    ('image_mtl.py', ['--dataset', 'bogus'], r"--dataset must be one of \['cifar-mtl', 'fashion-mnist-mtl', 'min-mtl', 'mnist-mtl'\], got 'bogus'"),
    ('image_mtl.py', ['--data_path', '/nonexistent/mnist.npz'], r'--data_path /nonexistent/mnist\.npz: does not exist'),
    ('image_mtl.py', ['--method', 'bogus'], r"unknown method 'bogus'; choose from \['cross-stitch'"),
    ('image_mtl.py', ['--sigma', '2'], r'sigma must be in \(0, 1\] \(the share of units a task keeps\), got 2.0'),
    ('image_mtl.py', ['--sigma', '-1'], r'sigma must be in \(0, 1\] \(the share of units a task keeps\), got -1.0'),
    ('image_mtl.py', ['--sigma_mode', 'share'], r"sigma_mode must be one of \('keep', 'knockout'\), got 'share'"),
    ('image_mtl.py', ['--sigma_mode', 'knockout', '--sigma', '1'], r"sigma must be in \[0, 1\) \(the share of units a task's mask switches off\), got 1.0"),
    ('image_mtl.py', ['--fc_layers', '0'], r'fc_layers must be >= 1, got 0'),
    ('image_mtl.py', ['--test_per_task', '0'], r'test_per_task must be >= 1, got 0'),
    ('image_mtl.py', ['--epochs', '0'], r'epochs must be >= 1, got 0'),
    ('image_mtl.py', ['--rho', '3'], r'rho must be in \[-1, 1\], got 3.0'),
    ('image_mtl.py', ['--conv_channels', '0'], r'conv_channels must be >= 1, got 0'),
    ('image_mtl.py', ['--fc_hidden', '0'], r'fc_hidden must be >= 1, got 0'),
    ('image_mtl.py', ['--router', 'bogus'], r"router must be one of \('tabular', "),
    ('image_mtl.py', ['--lr', '-1'], r'lr must be >= 0, got -1.0'),
    ('multinli.py', ['--data_dir', '/nonexistent/mnli'], r'--data_dir /nonexistent/mnli: does not exist'),
    ('multinli.py', ['--validation_split', 'bogus'], r"validation/test split must be one of \('validation_matched', 'validation_mismatched'\), got 'bogus'"),
    ('multinli.py', ['--test_split', 'bogus'], r"validation/test split must be one of \('validation_matched', 'validation_mismatched'\), got 'bogus'"),
    ('multinli.py', ['--methods', 'bogus'], r"unknown method 'bogus'; choose from \['cbow'"),
    ('multinli.py', ['--num_blocks', '0'], r'num_blocks must be >= 1, got 0'),
    ('multinli.py', ['--transformer_lr', '-1'], r'transformer_lr must be > 0, got -1.0'),
    ('multinli.py', ['--transformer_max_length', '0'], r'transformer_max_length must be >= 4, got 0'),
    ('multinli.py', ['--transformer_model', '/nonexistent/minilm'], r'--transformer_model /nonexistent/minilm: no such folder'),
    ('multinli.py', ['--embeddings', '/nonexistent/glove.txt'], r'--embeddings /nonexistent/glove\.txt: no such file'),
    ('multinli.py', ['--max_train_samples', '0'], r'max_train_samples must be >= 1, got 0'),
    ('multinli.py', ['--num_meta', '2'], r'--num_meta 2: the number of meta classes is set from the data'),
    ('multinli.py', ['--rho', '9'], r'rho must be in \[-1, 1\], got 9.0'),
]


@pytest.mark.parametrize(("recipe", "flags", "pattern"), RECIPE_CASES,
                         ids=[f"{r.removesuffix('.py')}{'_'.join(f)}" for r, f, _ in RECIPE_CASES])
def test_recipe_flags_are_validated_when_parsed(recipe, flags, pattern, monkeypatch, capsys) -> None:
    import runpy

    monkeypatch.setattr("sys.argv", [recipe, *flags, "--output_dir", "/nonexistent/never-written"])
    monkeypatch.delitem(sys.modules, f"recipes.{recipe.removesuffix('.py')}", raising=False)  # (runpy warns otherwise)
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(f"recipes.{recipe.removesuffix('.py')}", run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, f"more than the error line (a usage dump?):\n{err}"
    assert re.search(pattern, err.strip().splitlines()[-1]), err


# --------------------------------------------------------------------------- issue 31: recipes on broken files and folders
def _file(tmp: Path, name: str = "afile", raw: bytes = b"x") -> str:
    path = tmp / name
    path.write_bytes(raw)
    return str(path)


def _dir(tmp: Path, name: str, files: dict[str, str | bytes] | None = None) -> str:
    folder = tmp / name
    folder.mkdir()
    for fname, content in (files or {}).items():
        (folder / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(folder)


def _npz(tmp: Path, **arrays: np.ndarray) -> str:
    path = tmp / "arrays.npz"
    np.savez(path, **arrays)
    return str(path)


CSV_SPLITS = {f"{s}.csv": "premise,hypothesis,label,signature\nAnn left,Ann left,entails,+|-\n" for s in ("train", "validation", "test")}

#: (recipe, flags builder (tmp) -> flags, message): bad files and folders, and values that only the data can refute.
#: These may log a few INFO lines while the data loads; the error is the last line, with no traceback and no usage.
RECIPE_DATA_CASES = [
    ("sci_wp_dispatch.py", lambda t: ["--output_dir", _file(t)], r"--output_dir .*afile: is a file, not a folder"),
    ("sci_wp_dispatch.py", lambda t: ["--output_dir", _file(t) + "/run"], r"--output_dir .*afile/run: a parent of it is a file"),
    ("sci_wp_dispatch.py", lambda t: ["--data_dir", _file(t)], r"--data_dir .*afile: a file, not a folder"),
    ("sci_wp_dispatch.py", lambda t: ["--data_dir", _dir(t, "empty")], r"no SCI data found; expected files: \[.*empty/train\.jsonl"),
    ("sci_wp_dispatch.py", lambda t: ["--data_dir", _dir(t, "csv", CSV_SPLITS)], r"no SCI data found; expected files: \[.*csv/train\.jsonl"),
    ("sci_wp_dispatch.py", lambda t: ["--data_dir", str(write_sci(t / "sci", train="{oops\n"))], r"train\.jsonl:1: field <json>: malformed JSON"),
    ("sci_wp_dispatch.py", lambda t: ["--nested_dir", _file(t)], r"--nested_dir .*afile: not a folder"),
    ("sci_wp_dispatch.py", lambda t: ["--embeddings", str(t / "glove.txt")], r"--embeddings .*glove\.txt: no such file"),
    ("sci_wp_dispatch.py", lambda t: ["--resume_from", _dir(t, "ckpt")], r"--resume_from .*ckpt: not a complete checkpoint"),
    ("sci_wp_dispatch.py", lambda t: ["--num_classes", "2", "--output_dir", str(t / "o")],
     r"--num_classes 2, but the data has 3 labels \['entails', 'contradicts', 'permits'\]: use --num_classes 3"),
    ("sci_wp_dispatch.py", lambda t: ["--max_train_samples", "5", "--output_dir", str(t / "o")],
     r"--max_train_samples 5 cannot hold the 13 signature classes of the training data: use at least 13"),
    ("finetune_routed_transformer.py", lambda t: ["--output_dir", _file(t)], r"--output_dir .*afile: is a file, not a folder"),
    ("finetune_routed_transformer.py", lambda t: ["--data_dir", _dir(t, "empty")], r"no SCI data found; expected files"),
    ("finetune_routed_transformer.py", lambda t: ["--model_name_or_path", _file(t)], r"--model_name_or_path .*afile: no such folder"),
    ("finetune_routed_transformer.py", lambda t: ["--num_classes", "2", "--output_dir", str(t / "o")],
     r"--num_classes 2, but the data has 3 labels"),
    ("finetune_routed_transformer.py", lambda t: ["--route", "lora", "--target_modules", "nonexistent", "--max_train_samples", "16",
                                                  "--max_eval_samples", "8", "--output_dir", str(t / "o")],
     r"no module name matches \['nonexistent'\]"),
    ("image_mtl.py", lambda t: ["--data_path", _file(t, "bad.npz", b"not an archive")],
     r"bad\.npz: not a NumPy \.npz array archive \(neither a zip of \.npy arrays nor a \.npy array; pickles are not loaded\)"),
    ("image_mtl.py", lambda t: ["--data_path", _npz(t, foo=np.zeros(3))],
     r"arrays\.npz: missing arrays \['x_test', 'x_train', 'y_test', 'y_train'\] \(have \['foo'\]\)"),
    ("image_mtl.py", lambda t: ["--output_dir", _file(t)], r"--output_dir .*afile: is a file, not a folder"),
    ("multinli.py", lambda t: ["--data_dir", _dir(t, "empty")],
     r"no MultiNLI file for split\(s\) \['train', 'validation_matched', 'validation_mismatched'\] in .*empty"),
    ("multinli.py", lambda t: ["--data_dir", _dir(t, "partial", {"multinli_1.0_train.jsonl": "{oops\n"})],
     r"no MultiNLI file for split\(s\) \['validation_matched', 'validation_mismatched'\]"),
    ("multinli.py", lambda t: ["--data_dir", str(write_mnli(t / "mnli", dev_matched="{oops\n"))],
     r"multinli_1\.0_dev_matched\.jsonl:1: field <json>: malformed JSON"),
    ("multinli.py", lambda t: ["--data_dir", str(write_mnli(t / "mnli", train=b"\xff\xfe\n"))],
     r"multinli_1\.0_train\.jsonl:1: field <line>: invalid UTF-8"),
    ("multinli.py", lambda t: ["--output_dir", _file(t)], r"--output_dir .*afile: is a file, not a folder"),
]


@pytest.mark.parametrize(("recipe", "flags", "pattern"), RECIPE_DATA_CASES,
                         ids=[f"{r.removesuffix('.py')}-{i}" for i, (r, _, _) in enumerate(RECIPE_DATA_CASES)])
def test_recipe_refuses_bad_files_in_one_line(recipe, flags, pattern, tmp_path, monkeypatch, capsys) -> None:
    import runpy

    argv = flags(tmp_path)
    if "--output_dir" not in argv:
        argv += ["--output_dir", "/nonexistent/never-written"]
    monkeypatch.setattr("sys.argv", [recipe, *argv])
    monkeypatch.delitem(sys.modules, f"recipes.{recipe.removesuffix('.py')}", raising=False)  # (runpy warns otherwise)
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(f"recipes.{recipe.removesuffix('.py')}", run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and "usage:" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{recipe}: error: ") and re.search(pattern, last), err


# --------------------------------------------------------------------------- issue 31: the Python entry points
def _api_pipeline_missing(tmp: Path, model: Path) -> Any:
    import nli_routing.inference.pipeline  # noqa: F401
    from transformers import pipeline

    return pipeline("routed-nli", model=str(tmp / "nope"))


def _api_predictor(model: Path, **kw: Any) -> Any:
    from nli_routing.inference import RoutedNLIPredictor

    return RoutedNLIPredictor.from_pretrained(str(model), **kw)


def _api_automodel(folder: str) -> Any:
    from transformers import AutoModel

    import nli_routing  # noqa: F401  (registers the kinds)

    return AutoModel.from_pretrained(folder)


#: (name, call (tmp, saved model folder), exception, message)
API_CASES: list[tuple[str, Callable[[Path, Path], Any], type[Exception], str]] = [
    # (transformers' own message, before any code of ours runs; it names the path, not "model_type" as before)
    ("pipeline on a missing folder", _api_pipeline_missing, OSError, r"Repo id must be in the form .*/nope'"),
    ("predictor on a missing folder", lambda t, m: _api_predictor(t / "nope"), OSError, r"nope is neither a local folder nor a Hub model"),
    ("predictor on a file", lambda t, m: _api_predictor(Path(_file(t))), ValueError, r"afile is a file: a saved model is a folder"),
    ("predictor on corrupted weights", lambda t, m: _api_predictor(Path(_broken(t, m, "flip", _flip_weights))), CheckpointError,
     r"flip/model\.safetensors: SHA-256 .* does not match config\.json's weights_sha256"),
    ("predictor with an unknown fallback", lambda t, m: _api_predictor(m, meta_fallback="x|y"), ValueError,
     r"meta_fallback: unknown signature 'x\|y'"),
    ("predict on a string", lambda t, m: _api_predictor(m).predict("Ann left."), ValueError, r"a pair is a dict|got str"),
    ("predict on a number", lambda t, m: _api_predictor(m).predict([3]), ValueError, r"pair 0: .*got int"),
    ("predict a pair without a hypothesis", lambda t, m: _api_predictor(m).predict({"premise": "a", "signature": "+|-"}), ValueError,
     r"pair 0: no 'hypothesis' \(or 'text_pair'\) field"),
    ("predict a null premise", lambda t, m: _api_predictor(m).predict({"premise": None, "hypothesis": "b", "signature": "+|-"}),
     ValueError, r"pair 0: field 'premise' is null"),
    ("predict batch_size 0", lambda t, m: _api_predictor(m).predict({"premise": "a", "hypothesis": "b", "signature": "+|-"}, batch_size=0),
     ValueError, r"batch_size must be >= 1, got 0"),
    ("AutoModel on corrupted weights", lambda t, m: _api_automodel(_broken(t, m, "flip", _flip_weights)), CheckpointError,
     r"does not match config\.json's weights_sha256"),
    ("AutoModel on truncated weights", lambda t, m: _api_automodel(_broken(t, m, "trunc", lambda f: _truncate(f / "model.safetensors"))),
     CheckpointError, r"trunc/model\.safetensors is truncated or not a safetensors file"),
    ("word vectors from a missing file", lambda t, m: __import__("nli_routing.models.embeddings", fromlist=["x"]).load_word_vectors(
        str(t / "glove.txt")), FileNotFoundError, r"glove\.txt"),
    ("word vectors from a malformed GloVe file", lambda t, m: __import__("nli_routing.models.embeddings", fromlist=["x"]).load_word_vectors(
        _file(t, "bad.txt", b"the 0.1 0.2\ncat 0.3\n")), ValueError, r"bad\.txt:2: expected 2 values after the word, found 1"),
    ("load_sci on a missing folder", lambda t, m: load_sci(t / "nope"), FileNotFoundError, r"nope"),
    ("load_multinli on a missing folder", lambda t, m: load_multinli(t / "nope"), (FileNotFoundError, ValueError), r"nope"),
    ("a model config with an unknown route", lambda t, m: NLIModelConfig(route="bogus"), ValueError, r"route must be one of"),
    ("a model config with rho out of range", lambda t, m: NLIModelConfig(rho=2.0), ValueError, r"rho must be in \[-1, 1\], got 2.0"),
    ("a training config with momentum 1", lambda t, m: __import__("nli_routing.training.loop", fromlist=["x"]).TrainConfig(momentum=1.0),
     ValueError, r"momentum must be in \[0, 1\), got 1.0"),
]


@pytest.mark.parametrize(("name", "call", "error", "pattern"), API_CASES, ids=[c[0] for c in API_CASES])
def test_python_entry_points_refuse_bad_input(name, call, error, pattern, saved_model: Path, tmp_path: Path) -> None:
    with pytest.raises(error, match=pattern) as info:
        call(tmp_path, saved_model)
    assert len(str(info.value).splitlines()) == 1, f"{name}: {info.value}"


def test_the_bad_input_table_covers_every_entry_point() -> None:
    """Issue 31: at least 150 cases, across loaders, recipes, the CLI (predict, serve, app, analyze, convert,
    generate-sci), the pipeline, the predictor and the Auto classes."""
    tables = [CORPUS, INFERENCE_CASES, RECIPE_CASES, RECIPE_DATA_CASES, API_CASES]
    assert sum(map(len, tables)) >= 150
    names = [name for name, _, _ in INFERENCE_CASES]
    for command in ("predict", "serve", "app", "analyze", "convert", "generate-sci"):
        assert any(name.startswith(command + "-") for name in names), command
    recipes = {r for r, _, _ in RECIPE_CASES} | {r for r, _, _ in RECIPE_DATA_CASES}
    assert recipes == {"sci_wp_dispatch.py", "finetune_routed_transformer.py", "image_mtl.py", "multinli.py"}
