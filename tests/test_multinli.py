"""MultiNLI loader on small files made here in the official formats (release jsonl/txt, GLUE tsv), and the recipe."""

import importlib
import json

import datasets
import pytest

from nli_routing.data.multinli import (
    GENRES,
    LABELS,
    MultiNLIFormatError,
    load_multinli,
    multinli_features,
)


#: (genre, gold label, premise, hypothesis); "-" rows have no annotator majority and are dropped
TRAIN = [
    ("fiction", "entailment", "The dog ran home.", "An animal moved."),
    ("government", "contradiction", "Taxes rose in 1998.", "Taxes never rose."),
    ("slate", "-", "Critics disagreed.", "Everyone agreed."),
    ("telephone", "neutral", 'yeah i said "well okay"', "They talked on Tuesday."),
    ("travel", "entailment", "The inn is near the lake.", "There is an inn."),
]
DEV_MATCHED = [
    ("travel", "neutral", "The museum opens at nine.", "The museum is popular."),
    ("fiction", "-", "She left.", "She stayed."),
    ("slate", "contradiction", "The film won praise.", "The film was panned."),
]
DEV_MISMATCHED = [
    ("letters", "entailment", "Thank you for your gift.", "A gift was given."),
    ("oup", "neutral", "Tea spread across Europe.", "Tea is bitter."),
    ("nineeleven", "-", "The plane turned.", "The plane flew straight."),
]
FILES = {"train": TRAIN, "dev_matched": DEV_MATCHED, "dev_mismatched": DEV_MISMATCHED}
EXPECTED = {"train": 4, "validation_matched": 2, "validation_mismatched": 2}


def parse(text):  # the official files carry constituency parses of every sentence
    return "( " + " ( ".join(text.split()) + " )" * len(text.split())


def jsonl_line(i, genre, gold, premise, hypothesis):
    return json.dumps({
        "annotator_labels": [gold if gold != "-" else "neutral", "entailment"], "genre": genre, "gold_label": gold,
        "pairID": f"{i}e", "promptID": str(i), "sentence1": premise, "sentence1_binary_parse": parse(premise),
        "sentence1_parse": f"(ROOT {premise})", "sentence2": hypothesis,
        "sentence2_binary_parse": parse(hypothesis), "sentence2_parse": f"(ROOT {hypothesis})",
    })


def write_release_jsonl(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in FILES.items():
        lines = [jsonl_line(i, *row) for i, row in enumerate(rows)]
        (folder / f"multinli_1.0_{part}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


TXT_HEADER = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
              "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2", "label3", "label4", "label5"]


def write_release_txt(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in FILES.items():
        lines = ["\t".join(TXT_HEADER)]
        for i, (genre, gold, p, h) in enumerate(rows):
            lines.append("\t".join([gold, parse(p), parse(h), f"(ROOT {p})", f"(ROOT {h})", p, h, str(i), f"{i}n",
                                    genre, "neutral", "neutral", "", "", ""]))
        (folder / f"multinli_1.0_{part}.txt").write_text("\n".join(lines) + "\n")
    return folder


GLUE_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
GLUE_DEV = GLUE_TRAIN[:-2] + ["label1", "label2", "label3", "label4", "label5", "gold_label"]


def write_glue_tsv(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in FILES.items():
        header = GLUE_TRAIN if part == "train" else GLUE_DEV
        lines = ["\t".join(header)]
        for i, (genre, gold, p, h) in enumerate(rows):
            labels = [gold] if part == "train" else [gold, "neutral", "neutral", "neutral", "neutral"]
            lines.append("\t".join([str(i), str(1000 + i), f"{1000 + i}e", genre, parse(p), parse(h), f"(ROOT {p})",
                                    f"(ROOT {h})", p, h, *labels, gold]))
        (folder / f"{part}.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CRLF line ends
    return folder


@pytest.mark.parametrize("writer", [write_release_jsonl, write_release_txt, write_glue_tsv])
def test_official_formats_load_with_genre_classlabel(tmp_path, writer):
    folder = writer(tmp_path / "data")
    dsd, report = load_multinli(folder, return_report=True)
    assert list(dsd) == ["train", "validation_matched", "validation_mismatched"]
    assert {s: len(dsd[s]) for s in dsd} == EXPECTED
    assert {s: r["dropped_no_gold"] for s, r in report.items()} == {s: 1 for s in dsd}
    for split in dsd:
        assert dsd[split].features == multinli_features()
    assert dsd["train"].features["genre"].names == list(GENRES)
    assert dsd["train"].features["label"].names == list(LABELS) == ["entailment", "neutral", "contradiction"]
    train = dsd["train"]
    assert [train.features["genre"].int2str(g) for g in train["genre"]] == ["fiction", "government", "telephone",
                                                                            "travel"]
    assert train["label"] == [0, 2, 1, 0]
    assert train[2]["premise"] == 'yeah i said "well okay"'  # GLUE's unbalanced quotes are plain text
    mismatched = dsd["validation_mismatched"].features["genre"]
    assert {mismatched.int2str(g) for g in dsd["validation_mismatched"]["genre"]} == {"letters", "oup"}


def test_release_folder_inside_path_and_split_selection(tmp_path):
    write_release_jsonl(tmp_path / "multinli_1.0")
    dsd = load_multinli(tmp_path, splits=["validation_matched"])
    assert list(dsd) == ["validation_matched"] and len(dsd["validation_matched"]) == 2


def test_malformed_json_line_names_file_and_line(tmp_path):
    folder = write_release_jsonl(tmp_path)
    path = folder / "multinli_1.0_dev_matched.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]  # truncated JSON object on line 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MultiNLIFormatError, match=r"multinli_1\.0_dev_matched\.jsonl:2: field <json>"):
        load_multinli(folder)


def test_malformed_tsv_row_and_bad_values(tmp_path):
    folder = write_glue_tsv(tmp_path / "glue")
    path = folder / "train.tsv"
    lines = path.read_bytes().decode().split("\r\n")
    lines[2] = "\t".join(lines[2].split("\t")[:-2])  # line 3 lost two fields
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(MultiNLIFormatError, match=r"train\.tsv:3: field <row>: 10 tab-separated fields.*12"):
        load_multinli(folder)
    folder = write_release_jsonl(tmp_path / "rel")
    path = folder / "multinli_1.0_train.jsonl"
    path.write_text(path.read_text().replace('"gold_label": "neutral"', '"gold_label": "maybe"'))
    with pytest.raises(MultiNLIFormatError, match=r"train\.jsonl:4: field 'label' has unknown value 'maybe'"):
        load_multinli(folder)
    path.write_text(path.read_text().replace('"gold_label": "maybe"', '"gold_label": "neutral"')
                    .replace('"genre": "travel"', '"genre": "poetry"'))
    with pytest.raises(MultiNLIFormatError, match=r"train\.jsonl:5: field 'genre' has unknown value 'poetry'"):
        load_multinli(folder)
    path.write_text(path.read_text().replace('"sentence2"', '"s2"'))
    with pytest.raises(MultiNLIFormatError, match=r"train\.jsonl:1: field 'hypothesis' is missing"):
        load_multinli(folder)


def test_missing_files_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="multinli_1.0_train.jsonl"):
        load_multinli(tmp_path)
    with pytest.raises(ValueError, match="unknown MultiNLI split"):
        load_multinli(tmp_path, splits=["test"])


def test_hub_copy_is_converted_to_the_same_features(monkeypatch):
    hub_features = datasets.Features({
        "promptID": datasets.Value("int32"), "pairID": datasets.Value("string"),
        "premise": datasets.Value("string"), "premise_binary_parse": datasets.Value("string"),
        "hypothesis": datasets.Value("string"), "genre": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(LABELS)),
    })

    def split(rows):
        cols = {"promptID": [7] * len(rows), "pairID": ["7e"] * len(rows), "premise": [r[2] for r in rows],
                "premise_binary_parse": [""] * len(rows), "hypothesis": [r[3] for r in rows],
                "genre": [r[0] for r in rows], "label": [LABELS.index(r[1]) for r in rows]}
        return datasets.Dataset.from_dict(cols, features=hub_features)

    labelled = {k: [r for r in v if r[1] != "-"] for k, v in FILES.items()}
    fake = datasets.DatasetDict({"train": split(labelled["train"]), "validation_matched": split(labelled["dev_matched"]),
                                 "validation_mismatched": split(labelled["dev_mismatched"])})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, **kw: calls.append(hub_id) or fake)
    dsd, report = load_multinli(return_report=True)
    assert calls == ["nyu-mll/multi_nli"]
    assert {s: len(dsd[s]) for s in dsd} == EXPECTED and dsd["train"].features == multinli_features()
    assert dsd["train"]["promptID"][0] == "7" and report["train"]["dropped_no_gold"] == 0

    def offline(hub_id, **kw):
        raise OSError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="official files"):
        load_multinli()


def _recipe():
    """The MultiNLI recipe as a module of the ``recipes`` package."""
    return importlib.import_module("recipes.multinli")


def test_recipe_methods_resolve_to_experiment_methods():
    recipe = _recipe()
    assert recipe.canonical_method("wp-genre") == "wp-signature"
    assert recipe.canonical_method("lstm-i2h") == "lstm-i2h"
    assert recipe.canonical_method("transformer-attention") == "transformer-attention"
    with pytest.raises(ValueError, match="unknown method"):
        recipe.canonical_method("wp-nothing")


@pytest.fixture
def restore_denormals():
    """The training loop sets torch's process-wide flush-denormal flag; later tests (hypothesis) need it off."""
    yield
    import torch  # noqa: PLC0415

    torch.set_flush_denormal(False)


def test_recipe_trains_genre_routing_on_made_files(tmp_path, restore_denormals):
    folder = write_release_jsonl(tmp_path / "data")
    rows = _recipe().main([
        "--data_dir", str(folder), "--methods", "cbow", "wp-genre", "--epochs", "1", "--cpu", "--progress", "False",
        "--embeddings", "random:16", "--output_dir", str(tmp_path / "out"),
    ])
    assert [r["method"] for r in rows] == ["cbow", "wp-genre"]
    from nli_routing.analysis.records import load_routing_record

    record = load_routing_record(tmp_path / "out" / "wp-genre" / "routing_test.npz")
    assert record.meta_names == list(GENRES) and len(record) == 2 and record.layers[0].name == "wp"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["summary"][1]["method"] == "wp-genre"


def test_recipe_transformer_method_on_made_files(tmp_path, restore_denormals):
    recipe = _recipe()
    folder = write_release_jsonl(tmp_path / "data")
    rows = recipe.main([
        "--data_dir", str(folder), "--methods", "transformer-classifier", "--epochs", "1", "--cpu",
        "--progress", "False", "--transformer_max_length", "16", "--batch_size", "4",
        "--output_dir", str(tmp_path / "out"),
    ])
    assert rows[0]["method"] == "transformer-classifier" and rows[0]["test_accuracy"] is not None
