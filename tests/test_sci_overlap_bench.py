"""benchmarks/sci_overlap.py, Figure 5.13 (issue 32): nested signatures as classes of their own, the
shuffled-signature control, and the thesis' statements tested against it."""

import importlib
import json

import datasets
import numpy as np
import pytest

from nli_routing.data import EMBEDDED_SCI
from nli_routing.data.sci import SIGNATURES, load_sci

overlap = importlib.import_module("benchmarks.sci_overlap")


@pytest.fixture(scope="module")
def sci():
    return load_sci(EMBEDDED_SCI / "joint"), load_sci(EMBEDDED_SCI / "nested")


def test_nested_signatures_get_classes_of_their_own(sci):
    joint, nested = sci
    both = overlap.joint_with_nested(joint, nested, shuffle_seed=None)
    names = both["train"].features["signature"].names
    assert names == list(SIGNATURES) + ["N" + s for s in SIGNATURES]
    for split in joint:
        got = [names[i] for i in both[split]["signature"]]
        want = ([SIGNATURES[i] for i in joint[split]["signature"]]
                + ["N" + SIGNATURES[i] for i in nested[split]["signature"]])
        assert got == want  # nothing renamed but the nested rows, nothing dropped
        assert list(both[split]["premise"]) == list(joint[split]["premise"]) + list(nested[split]["premise"])


def test_the_control_permutes_signatures_and_keeps_their_counts(sci):
    joint, nested = sci
    real = overlap.joint_with_nested(joint, nested, shuffle_seed=None)
    control = overlap.joint_with_nested(joint, nested, shuffle_seed=1000)
    again = overlap.joint_with_nested(joint, nested, shuffle_seed=1000)
    for split in real:
        a, b = np.asarray(real[split]["signature"]), np.asarray(control[split]["signature"])
        assert sorted(a) == sorted(b) and (a != b).mean() > 0.5
        assert list(control[split]["premise"]) == list(real[split]["premise"])
        assert list(control[split]["label"]) == list(real[split]["label"])
        assert list(again[split]["signature"]) == list(b)  # seeded


def test_thesis_checks_read_pairs_isolation_and_nested_twins():
    classes = ["+|-", "-|+", "+|+", ".9|-", ".4|-", "N+|-", "N-|+"]
    m = np.full((7, 7), 1.0)
    np.fill_diagonal(m, 3.0)
    i = {c: k for k, c in enumerate(classes)}
    for a, b in (("N+|-", "+|-"), ("N-|+", "-|+")):  # twins share the whole path
        m[i[a], i[b]] = m[i[b], i[a]] = 3.0
    m[i["+|+"], :] = m[:, i["+|+"]] = 0.0  # +|+ shares nothing
    m[i["+|+"], i["+|+"]] = 3.0
    m[i[".9|-"], i[".4|-"]] = m[i[".4|-"], i[".9|-"]] = 2.0
    checks = overlap.thesis_checks(classes, np.stack([m, m]))
    assert checks["pairs"]["+|.4 / +|.5"] == {"absent": ["+|.4", "+|.5"]}
    assert checks["pairs"][".9|- / .4|-"]["per_seed"] == [2.0, 2.0]
    iso = checks["isolated_++"]
    assert iso["per_seed_++_mean_overlap"] == [0.0, 0.0] and iso["per_seed_others_mean_overlap"][0] > 1.0
    nest = checks["nested"]
    assert nest["twins"] == ["+|-", "-|+"]
    assert nest["per_seed_counterpart_overlap"] == [3.0, 3.0]
    assert nest["per_seed_other_unnested_overlap"][0] < 1.0  # 0 with +|+, 1 with the other three

    control = overlap.thesis_checks(classes, np.stack([np.full((7, 7), 1.0), np.full((7, 7), 0.5)]))
    verdict = overlap.compare_to_control(checks, control)
    assert verdict["nested"]["real_contrast"]["mean_difference"] > 2.0
    assert verdict["nested"]["control_contrast"]["mean_difference"] == 0.0
    assert verdict["pairs"][".9|- / .4|-"]["difference"] == pytest.approx(2.0 - 0.75)
    assert verdict["pairs"]["-|.7 / -|.9"] == {"absent": ["-|.7", "-|.9"]}


@pytest.mark.parametrize("argv, message", [
    (["--nested_dir", "/no/such/folder"], "--nested_dir /no/such/folder: not a folder"),
    (["--nested_dir", __file__], "not a folder"),
    (["--control", "/no/such/folder"], "no summary.json"),
    (["--control", str(EMBEDDED_SCI)], "no summary.json"),
])
def test_bad_folders_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        overlap.main(["--data_dir", str(EMBEDDED_SCI / "joint"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_a_run_root_of_other_data_is_refused(tmp_path, capsys):
    seed_dir = tmp_path / "seed0"
    seed_dir.mkdir()
    (seed_dir / "overlap_data.json").write_text(json.dumps({"data_dir": "elsewhere"}))
    with pytest.raises(SystemExit):
        overlap.main(["--data_dir", str(EMBEDDED_SCI / "joint"), "--seeds", "0", "--run_root", str(tmp_path)])
    assert "was trained on other data" in capsys.readouterr().err


def test_datasets_features_of_the_combination_are_class_labels(sci):
    joint, nested = sci
    both = overlap.joint_with_nested(joint, None, shuffle_seed=3)
    assert isinstance(both["test"].features["signature"], datasets.ClassLabel)
    assert len(both["test"]) == len(joint["test"])
