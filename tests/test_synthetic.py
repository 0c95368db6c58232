"""Tests for the synthetic SCI-style generator (nli_routing.data.synthetic)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nli_routing.data import EMBEDDED_SCI
from nli_routing.data.sci import LABELS, SIGNATURES, VARIANTS, check_meta_coverage, load_sci
from nli_routing.data.synthetic import (
    COMPLEMENTS,
    LEXICON,
    MISMATCH_HELD_OUT,
    compose_signatures,
    disjoint_partition,
    generate_sci,
    label_forward,
    label_reverse,
    main,
    signature_values,
    write_sci,
)

EMBEDDED = EMBEDDED_SCI


def _by_name(name: str):
    return next(c for c in LEXICON if c.name == name)


def test_lexicon_covers_all_signatures() -> None:
    assert len(LEXICON) >= 30
    assert len({c.name for c in LEXICON}) == len(LEXICON)
    assert {c.signature for c in LEXICON} == set(SIGNATURES)
    assert _by_name("manage").signature == "+|-" and _by_name("fail").signature == "-|+"
    assert _by_name("be able").signature == ".9|-"


def test_determinism_by_seed() -> None:
    a = generate_sci("joint", 200, 50, 50, seed=3)
    assert a == generate_sci("joint", 200, 50, 50, seed=3)
    assert a != generate_sci("joint", 200, 50, 50, seed=4)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [200, 50, 50]


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_valid_balanced_and_no_leak(variant: str) -> None:
    data = generate_sci(variant, 600, 150, 150, seed=0)
    pairs = {s: {(r["premise"], r["hypothesis"]) for r in rows} for s, rows in data.items()}
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["validation"]
    for rows in data.values():
        assert all(set(r) == {"premise", "hypothesis", "label", "signature", "construction"} for r in rows)
        assert all(r["label"] in LABELS and r["signature"] in SIGNATURES for r in rows)
        counts = Counter(r["label"] for r in rows)
        assert max(counts.values()) / len(rows) < 0.56 and len(counts) == 3


def test_signature_values_discretisation() -> None:
    assert signature_values("+|-") == ("+", "-")
    assert signature_values(".9|-") == ("+", "-")
    assert signature_values("-|.7") == ("-", "+")
    assert signature_values(".4|-") == ("o", "-")
    assert signature_values("+|.5") == ("+", "o")


def test_hand_checked_labels() -> None:
    assert label_forward("+|-", True, True) == "entails"  # managed to leave -> left
    assert label_forward("+|-", False, True) == "contradicts"  # did not manage to leave -> left
    assert label_forward("+|-", False, False) == "entails"  # ... -> did not leave
    assert label_forward("-|+", False, True) == "entails"  # did not fail to leave -> left
    assert label_forward("o|o", True, True) == "permits" and label_forward("o|o", False, False) == "permits"
    assert label_forward("+|o", False, True) == "permits"  # was not forced to leave
    assert label_forward("+|+", False, True) == "entails"  # did not realize that she had left
    # reverse direction: plain premise, implicative hypothesis
    assert label_reverse("+|-", False, True) == "contradicts"  # did not leave / managed to leave
    assert label_reverse("+|-", True, True) == "permits"  # left / managed to leave
    assert label_reverse("o|+", False, False) == "contradicts"  # did not leave / did not hesitate to


def _polarity(sentence: str, positive: str, negatives: tuple[str, ...]) -> bool | None:
    if any(n in sentence for n in negatives):
        return False
    return True if positive in sentence else None


def test_generated_rows_match_hand_checked_templates() -> None:
    """Re-read forward examples of manage/fail/attempt from their surface form."""
    verbs = {"manage": ("managed", "manage"), "fail": ("failed", "fail"), "attempt": ("attempted", "attempt")}
    expected = {  # (construction, premise positive, hypothesis positive) -> label
        ("manage", True, True): "entails", ("manage", True, False): "contradicts",
        ("manage", False, True): "contradicts", ("manage", False, False): "entails",
        ("fail", True, True): "contradicts", ("fail", True, False): "entails",
        ("fail", False, True): "entails", ("fail", False, False): "contradicts",
    }
    checked = Counter()
    for r in generate_sci("joint", 3000, 10, 10, seed=0)["train"]:
        if r["construction"] not in verbs:
            continue
        past, base = verbs[r["construction"]]
        negated = (f"not {base} to", f"n't {base} to", f"never {past} to")
        p_pos = _polarity(r["premise"], f" {past} to ", negated)
        if p_pos is None:  # reverse direction: construction is in the hypothesis
            continue
        base_vp = r["premise"].split(" to ", 1)[1]
        vp = next(v for v in COMPLEMENTS if base_vp.startswith(v[0]))
        h_pos = _polarity(r["hypothesis"], vp[1], (f"not {vp[0]}", f"n't {vp[0]}", f"never {vp[1]}"))
        if h_pos is None:  # distractor hypothesis
            assert r["label"] == "permits"
            continue
        want = "permits" if r["construction"] == "attempt" else expected[(r["construction"], p_pos, h_pos)]
        assert r["label"] == want, r
        checked[(r["construction"], p_pos, h_pos)] += 1
    assert len(checked) == 12  # every combination was seen


def test_nested_composition() -> None:
    # manage (+|-) over forget (-|+): "managed to forget to leave" -> did not leave
    assert compose_signatures("+|-", "-|+") == "-|+"
    assert label_forward(compose_signatures("+|-", "-|+"), True, True) == "contradicts"
    assert compose_signatures("+|-", "+|-") == "+|-"
    assert compose_signatures("o|o", "+|+") == "+|+"  # factive presupposition projects
    assert compose_signatures(".9|-", "o|+") == "o|+"
    rows = generate_sci("nested", 400, 50, 50, seed=0)["train"]
    for r in rows:
        outer, inner = r["construction"].split("+")
        assert r["signature"] == compose_signatures(_by_name(outer).signature, _by_name(inner).signature)
        assert r["signature"] in SIGNATURES


def test_disjoint_has_no_construction_overlap() -> None:
    data = generate_sci("disjoint", 500, 100, 100, seed=0)
    names = {s: {r["construction"] for r in rows} for s, rows in data.items()}
    assert not names["train"] & names["test"] and not names["train"] & names["validation"]
    parts = disjoint_partition(0)
    assert {c.signature for c in parts["test"]} <= {c.signature for c in parts["train"]}


def test_mismatch_train_lacks_held_out_signatures() -> None:
    assert MISMATCH_HELD_OUT == {"o|+", "+|.5", "-|.7", "+|+"}
    data = generate_sci("mismatch", 500, 200, 200, seed=0)
    assert not {r["signature"] for r in data["train"]} & MISMATCH_HELD_OUT
    assert MISMATCH_HELD_OUT <= {r["signature"] for r in data["test"]}
    joint = generate_sci("joint", 500, 200, 200, seed=0)
    assert data["test"] == joint["test"] and data["validation"] == joint["validation"]


def test_write_sci_and_cli_roundtrip(tmp_path: Path) -> None:
    sizes = {"train": 60, "validation": 20, "test": 20}
    write_sci(tmp_path / "a", variants=("joint", "nested"), sizes=sizes, seed=1)
    dsd = load_sci(tmp_path / "a", variant="nested")
    assert dsd.num_rows == {"train": 60, "validation": 20, "test": 20}
    main(["--out", str(tmp_path / "b"), "--n_train", "60", "--n_validation", "20", "--n_test", "20",
          "--seed", "1", "--variants", "joint"])
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a/joint" / f"{split}.jsonl").read_bytes() == \
            (tmp_path / "b/joint" / f"{split}.jsonl").read_bytes()


def test_embedded_sample_loads() -> None:
    for variant in VARIANTS:
        dsd = load_sci(EMBEDDED / variant)
        assert dsd.num_rows == {"train": 3000, "validation": 500, "test": 500}
        unseen = check_meta_coverage(dsd, allow_unseen=True)
        assert unseen == (set(MISMATCH_HELD_OUT) if variant == "mismatch" else set())


def test_embedded_sample_is_reproducible() -> None:
    data = generate_sci("joint", 3000, 500, 500, seed=0)
    with open(EMBEDDED / "joint" / "test.jsonl", encoding="utf-8") as fh:
        assert [json.loads(line) for line in fh] == data["test"]
