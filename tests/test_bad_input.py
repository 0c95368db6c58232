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
]


@pytest.mark.parametrize(("name", "argv", "pattern"), INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES])
def test_inference_bad_input(name, argv, pattern, saved_model: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(argv(tmp_path, saved_model))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    last = err.strip().splitlines()[-1]  # (argparse's own errors print the usage above it)
    assert "Traceback" not in err and last.startswith("nli-routing "), err
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
    ("sci_wp_dispatch.py", ["--exploration", "nope"], r"exploration must be one of \['high', 'low', 'med', 'none'\]"),
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
    ("sci_wp_dispatch.py", ["--dispatch_target", "bogus"], r"dispatch_target must be one of \('reward', 'best-agent', 'meta', 'auto'\)"),
    ("sci_wp_dispatch.py", ["--dispatch_target", "meta", "--methods", "wp-basic"], r"wp-basic: --dispatch_target meta .* two-stage"),
    ("sci_wp_dispatch.py", ["--dispatch_agent_optimizer", "adam"], r"dispatch_agent_optimizer must be one of \('routers', 'blocks'\)"),
    ("sci_wp_dispatch.py", ["--dispatch_agent_optimizer", ""], r"dispatch_agent_optimizer must be one of \('routers', 'blocks'\)"),
    ("finetune_routed_transformer.py", ["--num_blocks", "0"], r"num_blocks must be >= 1, got 0"),
    ("finetune_routed_transformer.py", ["--max_length", "2"], r"max_length must be >= 4, got 2"),
    ("image_mtl.py", ["--per_class", "0"], r"per_class must be >= 1, got 0"),
    ("multinli.py", ["--max_eval_samples", "0"], r"max_eval_samples must be >= 1, got 0"),
    ("multinli.py", ["--wp_width", "0"], r"wp_width must be >= 1, got 0"),
]


@pytest.mark.parametrize(("recipe", "flags", "pattern"), RECIPE_CASES,
                         ids=[f"{r.removesuffix('.py')}{'_'.join(f)}" for r, f, _ in RECIPE_CASES])
def test_recipe_flags_are_validated_when_parsed(recipe, flags, pattern, monkeypatch, capsys) -> None:
    import runpy

    monkeypatch.setattr("sys.argv", [recipe, *flags, "--output_dir", "/nonexistent/never-written"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(f"recipes.{recipe.removesuffix('.py')}", run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, f"more than the error line (a usage dump?):\n{err}"
    assert re.search(pattern, err.strip().splitlines()[-1]), err
