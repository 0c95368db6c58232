"""Routing analyses on hand-built routing records with known answers: overlap, maps, policies, plots, CLI."""

import json

import numpy as np
import pytest
import torch

from nli_routing.analysis.overlap import (
    cluster_order,
    dominant_paths,
    path_overlap,
    regroup,
    routing_map,
    soft_path_overlap,
)
from nli_routing.analysis.plots import plot_dispatch_distribution
from nli_routing.analysis.policies import policy_cosine, router_tables, table_policies
from nli_routing.analysis.records import LayerRecord, RoutingRecord
from nli_routing.analysis.report import analyze_record
from nli_routing.cli import main

NAMES = ["a", "b", "c", "d", "unused"]
#: (meta class, path through a depth-3 WP layer with 4 blocks, copies); -1 = stopped
SAMPLES = [
    (0, (0, 1, 2), 3), (0, (3, 3, 3), 1),  # a: dominant 0-1-2 (share 3/4)
    (1, (0, 1, 3), 2),                     # b: shares depths 1, 2 with a
    (2, (3, 1, 2), 2),                     # c: shares depths 2, 3 with a, depth 2 with b
    (3, (1, 0, -1), 2),                    # d: stops after two steps, shares nothing by depth
]


def make_record(with_dispatch: bool = False) -> RoutingRecord:
    meta, paths = [], []
    for m, path, copies in SAMPLES:
        meta += [m] * copies
        paths += [path] * copies
    actions = np.array(paths)
    dispatch = np.array([m % 2 for m in meta]) if with_dispatch else None
    return RoutingRecord(
        meta=np.array(meta), meta_names=NAMES, layers=[LayerRecord("wp", 4, actions, actions >= 0)],
        dispatch=dispatch, num_dispatch=2 if with_dispatch else 0,
        labels=np.zeros(len(meta), dtype=int), preds=np.array([0, 1] * (len(meta) // 2)),
    )


def test_dominant_paths_and_overlap_known_answer():
    rec = make_record()
    dom = dominant_paths(rec)
    assert dom["classes"] == ["a", "b", "c", "d"]  # classes without samples are left out
    assert dom["paths"].tolist() == [[0, 1, 2], [0, 1, 3], [3, 1, 2], [1, 0, -1]]
    assert dom["share"] == [0.75, 1.0, 1.0, 1.0] and dom["length"] == [3, 3, 3, 2]
    ov = path_overlap(rec)
    expected = [[3, 2, 2, 0], [2, 3, 1, 0], [2, 1, 3, 0], [0, 0, 0, 2]]
    assert ov["overlap"].tolist() == expected
    by_module = path_overlap(rec, match="module")["overlap"]
    assert by_module.tolist() == [[3, 2, 2, 2], [2, 3, 2, 2], [2, 2, 3, 1], [2, 2, 1, 2]]
    # clustering: d (shares nothing) at an end, a between b and c
    order = ov["order"]
    assert order[0] == 3 or order[-1] == 3
    pos = {cls: order.index(i) for i, cls in enumerate("abcd")}
    assert abs(pos["a"] - pos["b"]) == 1 and abs(pos["a"] - pos["c"]) == 1


def test_overlap_ignores_stop_action_and_spans_layers():
    acts = np.array([[0, 4], [0, 1]])  # action 4 is the stop action
    rec = RoutingRecord(
        meta=np.array([0, 1]), meta_names=["x", "y"],
        layers=[LayerRecord("wp", 5, acts, np.ones_like(acts, bool), stop_action=4),
                LayerRecord("classifier", 2, np.array([[1], [1]]), np.ones((2, 1), bool))],
    )
    ov = path_overlap(rec)
    assert ov["columns"] == ["wp d1", "wp d2", "classifier d1"]
    assert ov["overlap"].tolist() == [[2, 2], [2, 3]]


def test_soft_overlap_routing_map_and_regroup():
    rec = make_record(with_dispatch=True)
    soft = soft_path_overlap(rec)["overlap"]
    assert soft[0, 1] == pytest.approx(0.75 + 0.75 + 0.25)
    assert soft[3, 3] == pytest.approx(2.0)
    rmap = routing_map(rec)
    assert rmap["modules"][0].tolist() == [0, 1, 2] and rmap["shares"][0].tolist() == [0.75] * 3
    assert rmap["modules"][3].tolist() == [1, 0, -1]
    by_dispatch = regroup(rec, "dispatch")
    assert by_dispatch.meta_names == ["dispatch 0", "dispatch 1"]
    assert dominant_paths(by_dispatch)["paths"].tolist() == [[0, 1, 2], [0, 1, 3]]
    with pytest.raises(ValueError, match="no dispatch"):
        regroup(make_record(), "dispatch")


def test_cluster_order_groups_similar_rows():
    m = np.array([[3, 0, 3, 0], [0, 3, 0, 2], [3, 0, 3, 0], [0, 2, 0, 3]])
    order = cluster_order(m)
    assert sorted(order) == [0, 1, 2, 3]
    assert abs(order.index(0) - order.index(2)) == 1 and abs(order.index(1) - order.index(3)) == 1


def test_policy_cosine_greedy_softmax_table():
    table = torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 0, 1]], [[2, 0, 0], [0, 3, 0]]])
    pc = policy_cosine(table, ["x", "y", "z"])
    assert pc["cosine"][0, 1] == pytest.approx(0.5) and pc["cosine"][0, 2] == pytest.approx(1.0)
    assert pc["greedy"].tolist() == [[0, 1], [0, 2], [0, 1]]
    soft = table_policies(table, "softmax")
    assert np.allclose(soft.sum(-1), 1.0) and soft[0, 0].argmax() == 0
    wpl = table_policies(torch.tensor([[[0.5, 0.5, 0.0]]]), "table")
    assert wpl.tolist() == [[[0.5, 0.5, 0.0]]]
    sub = policy_cosine(table, ["x", "y", "z"], agents=[0, 2])
    assert sub["classes"] == ["x", "z"] and sub["cosine"].shape == (2, 2)
    tables = router_tables({"encoder.projection.router.table": table, "w": torch.zeros(3)})
    assert list(tables) == ["encoder.projection.router"]


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_and_numbers_are_written(tmp_path):
    rec = make_record(with_dispatch=True)
    state = {"encoder.projection.router.table": torch.randn(len(NAMES), 3, 4)}
    result = analyze_record(rec, tmp_path, group_name="genre", state_dict=state)
    for name in ("overlap", "soft_overlap", "routing_map", "dispatch", "policy_cosine_encoder_projection_router"):
        assert _is_png(tmp_path / f"{name}.png"), name
        assert (tmp_path / f"{name}.csv").stat().st_size > 0
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["overlap"]["matrix"] == result["overlap"]["matrix"].tolist()
    assert saved["dispatch"]["distribution"]["a"] == [4, 0]
    assert set(json.loads((tmp_path / "entropy.json").read_text())["selection_entropy"]["wp"]["by_class"]) == set("abcd")
    assert _is_png(plot_dispatch_distribution(rec, tmp_path / "direct.png"))
    with pytest.raises(ValueError, match="no dispatch"):
        plot_dispatch_distribution(make_record(), tmp_path / "none.png")


def test_cli_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    make_record(with_dispatch=True).save(run / "routing_test.npz")
    torch.save({"encoder.projection.router.table": torch.randn(len(NAMES), 3, 4)}, run / "model.pt")
    main(["analyze", str(run), "--by", "genre"])
    assert "0-1-2" in capsys.readouterr().out
    assert _is_png(run / "analysis_test_genre" / "overlap.png")
    main(["analyze", str(run), "--by", "dispatch", "--out", str(tmp_path / "d"), "--match", "module"])
    assert json.loads((tmp_path / "d" / "analysis.json").read_text())["overlap"]["classes"][0].startswith("dispatch")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # a missing record: one clear line, exit status 2
        main(["analyze", str(run), "--split", "validation"])
    assert info.value.code == 2 and "routing_validation.npz does not exist" in capsys.readouterr().err


def test_greedy_policy_spreads_ties_like_the_router():
    untrained = torch.full((2, 1, 4), -1.0)
    assert table_policies(untrained, "greedy")[0, 0].tolist() == [0.25] * 4
    assert policy_cosine(untrained)["cosine"][0, 1] == pytest.approx(1.0)


def test_a_cluster_routed_record_is_analysed_by_signature_and_genre_is_refused(tmp_path, capsys):
    """The record of a cluster-routed run keeps the data's signatures beside the clusters it routed on."""
    from dataclasses import replace

    rec = make_record()
    signatures = np.array([i % 2 for i in range(len(rec))])
    clustered = replace(rec, meta_column="cluster", data_meta=signatures, data_meta_names=["+|-", "-|+"],
                        data_meta_column="signature")
    run = tmp_path / "run"
    clustered.save(run / "routing_test.npz")
    main(["analyze", str(run), "--by", "signature", "--dpi", "60", "--vector", "svg"])
    out = run / "analysis_test_signature"
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["overlap"]["classes"] and set(saved["overlap"]["classes"]) == {"+|-", "-|+"}
    assert (out / "overlap.svg").stat().st_size > 0 and _is_png(out / "overlap.png")
    main(["analyze", str(run), "--by", "meta", "--vector", "none"])
    assert set(json.loads((run / "analysis_test_meta" / "analysis.json").read_text())["overlap"]["classes"]) == set("abcd")
    assert not (run / "analysis_test_meta" / "overlap.pdf").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["analyze", str(run), "--by", "genre"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "holds cluster and signature classes, not genre" in err
    plain = tmp_path / "plain"
    replace(rec, meta_column="signature").save(plain / "routing_test.npz")
    with pytest.raises(SystemExit):
        main(["analyze", str(plain), "--by", "genre"])
    assert "holds signature classes, not genre (use --by meta)" in capsys.readouterr().err


def test_figure_titles_name_the_model_and_grammar():
    from nli_routing.analysis.report import describe_config, plural

    assert plural(1, "routed position") == "1 routed position" and plural(3, "layer") == "3 layers"
    assert describe_config({"route": "wp", "wp_depth": 3, "wp_width": 4}) == "WP d=3, b=4"
    assert describe_config({"route": "wp", "wp_depth": 1, "wp_width": 4, "meta_column": "cluster"}) == \
        "WP d=1, b=4; routed on offline clusters"
    assert describe_config({"model_type": "nli-routing-lstm", "route": "none", "lstm_route": "h2h", "lstm_depth": 2,
                           "lstm_width": 4}) == "LSTM H2H d=2, b=4"
