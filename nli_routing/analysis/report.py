"""``nli-routing analyze``: every routing analysis of a training run, as PNG heatmaps, CSV and JSON.

:func:`analyze_run` reads a run folder written by :func:`nli_routing.training.loop.train`
(``routing_<split>.npz`` and, for the policy similarity, the saved model's ``model.safetensors``) and writes into ``out_dir``:

* ``overlap.{png,csv}``: module selections shared by the dominant paths of every pair of classes
  (diagonal = path length), rows ordered by hierarchical clustering (Figures 5.12/5.13);
  ``soft_overlap.{png,csv}``: the same for two random samples of the classes (expected value);
  ``dominant_paths.csv``: each class's dominant path, its share of the class and the class size;
* ``routing_map.{png,csv}``: the module chosen at each depth for each class (Figure 5.6);
* ``entropy.json``: selection entropy per routed layer, overall and per class; accuracy per class;
* ``dispatch.{png,csv}`` (runs with a learned dispatcher): dispatch choices per class (Figure 6.5);
* ``policy_cosine_<router>.{png,csv}``: cosine similarity of the tabular agents' policies;
* ``analysis.json``: all the numbers above.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .entropy import dispatch_statistics
from .overlap import class_entropy, cluster_order, path_overlap, regroup, routing_map, soft_path_overlap
from .plots import plot_dispatch_distribution, plot_heatmap, plot_routing_map
from .policies import POLICY_KINDS, policy_cosine, router_tables
from .records import RoutingRecord, load_routing_record

__all__ = ["GROUPINGS", "analyze_run", "analyze_record"]

logger = logging.getLogger(__name__)

#: ``--by`` values: the record's meta column (whatever it holds: signature, genre) or the dispatch column
GROUPINGS = ("signature", "genre", "meta", "dispatch")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def _write_matrix(path: Path, matrix: Any, rows: Sequence[str], cols: Sequence[str], corner: str = "") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([corner, *cols])
        for name, row in zip(rows, np.asarray(matrix).tolist()):
            w.writerow([name, *[round(v, 6) if isinstance(v, float) else v for v in row]])
    return path


def _reorder(matrix: np.ndarray, order: Sequence[int]) -> np.ndarray:
    return np.asarray(matrix)[np.ix_(order, order)]


def plural(n: int, word: str) -> str:
    """``"1 position"``, ``"3 positions"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


#: how a figure names the classes of each ``--by`` grouping
GROUP_WORDS = {"signature": "signatures", "genre": "genres", "meta": "meta classes", "dispatch": "dispatch classes",
               "cluster": "clusters"}
#: readable names of router parameter prefixes (policy similarity titles)
ROUTER_WORDS = {"encoder.projection": "word-projection", "classifier.routed": "classifier", "encoder.routed": "LSTM",
                "routing_controller": "Transformer"}


def describe_config(config: dict | None) -> str:
    """What a reader knows about a run's model, from its ``config.json``: ``"WP d=3, b=4"``,
    ``"classifier, 1 layer, b=4"``, ``"LSTM H2H d=2, b=4"``, ``"attention copies, b=2"``."""
    if not config:
        return ""
    c, parts = config, []
    route = c.get("route", "none")
    if c.get("model_type") == "nli-routing-lstm" and c.get("lstm_route", "none") != "none":
        parts.append(f"LSTM {c['lstm_route'].upper()} d={c.get('lstm_depth')}, b={c.get('lstm_width')}")
    if c.get("model_type") == "nli-routing-transformer" and route in ("attention", "block"):
        parts.append(f"{route} copies, b={c.get('num_blocks')}")
    if "wp" in route:
        parts.append(f"WP d={c.get('wp_depth')}, b={c.get('wp_width')}")
    if "classifier" in route:
        parts.append(f"classifier, {plural(int(c.get('classifier_layers', 1)), 'layer')}, b={c.get('classifier_width')}")
    if c.get("meta_column") in ("cluster", "dispatch"):
        parts.append("routed on " + ("offline clusters" if c["meta_column"] == "cluster" else "a learned dispatcher"))
    return "; ".join(parts)


def _router_words(key: str) -> str:
    for prefix, words in ROUTER_WORDS.items():
        if key.startswith(prefix):
            return words
    return key


def _path_text(path: Sequence[int]) -> str:
    return "-".join("." if a < 0 else str(int(a)) for a in path)


def analyze_record(
    record,
    out_dir: str | Path,
    group_name: str = "meta",
    match: str = "depth",
    state_dict: Any = None,
    policy: str = "greedy",
    temperature: float = 1.0,
    label: str = "",
    meta_record=None,
    dpi: int = 120,
    vector: str | None = "pdf",
) -> dict[str, Any]:
    """Run every analysis on a (regrouped) routing record; see the module docstring for the files.

    ``state_dict`` (or a saved model: folder, ``model.safetensors`` or an older ``model.pt``) adds the policy similarity of its tabular routers: a
    table with one row per meta class of ``meta_record`` (default ``record``; pass the record
    before :func:`~nli_routing.analysis.overlap.regroup` when grouping by dispatch) is shown for
    the classes present in it, other tables with all their rows (named after the groups of
    ``record`` when the numbers match). Returns the numbers and ``files``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    result: dict[str, Any] = {"group_by": group_name, "samples": len(record), "match": match}
    groups = GROUP_WORDS.get(group_name, group_name)
    tail = f" ({label})" if label else ""
    save = {"dpi": dpi, "vector": vector}
    if record.layers:
        ov = path_overlap(record, match=match)
        order = ov["order"]
        classes = [ov["classes"][i] for i in order]
        overlap = _reorder(ov["overlap"], order)
        result["overlap"] = {"classes": classes, "matrix": overlap, "columns": ov["columns"]}
        files.append(_write_matrix(out / "overlap.csv", overlap, classes, classes, group_name))
        positions = len(ov["columns"])
        files.append(plot_heatmap(
            overlap, classes, classes, out / "overlap.png", cmap="Blues", vmin=0, vmax=max(positions, 1),
            colorbar_label="shared module selections", discrete=True, xlabel=group_name, ylabel=group_name,
            title=f"path overlap between {groups}{tail}\n(dominant paths, {plural(positions, 'routed position')}, "
                  f"same module {'at the same depth' if match == 'depth' else 'at any depth'})", **save,
        ))
        soft = soft_path_overlap(record)
        soft_m = _reorder(soft["overlap"], order)
        result["soft_overlap"] = {"classes": classes, "matrix": soft_m}
        files.append(_write_matrix(out / "soft_overlap.csv", soft_m, classes, classes, group_name))
        files.append(plot_heatmap(
            soft_m, classes, classes, out / "soft_overlap.png", cmap="Blues", vmin=0,
            vmax=max(positions, 1), colorbar_label="expected shared selections", xlabel=group_name, ylabel=group_name,
            title=f"expected path overlap of two samples between {groups}{tail}", **save,
        ))
        dominant = []
        with (out / "dominant_paths.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([group_name, "samples", "dominant_path", "share", "length", *ov["columns"]])
            for i in order:
                row = {"class": ov["classes"][i], "samples": ov["count"][i], "path": _path_text(ov["paths"][i]),
                       "share": ov["share"][i], "length": ov["length"][i]}
                dominant.append(row)
                w.writerow([row["class"], row["samples"], row["path"], round(row["share"], 4), row["length"],
                            *ov["paths"][i].tolist()])
        files.append(out / "dominant_paths.csv")
        result["dominant_paths"] = dominant

        rmap = routing_map(record)
        idx = [rmap["classes"].index(c) for c in classes]
        rmap_sorted = {**rmap, "classes": classes, "modules": rmap["modules"][idx], "shares": rmap["shares"][idx],
                       "distribution": [rmap["distribution"][i] for i in idx]}
        result["routing_map"] = rmap_sorted
        with (out / "routing_map.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([group_name, *[f"{c} module" for c in rmap["depth_labels"]],
                        *[f"{c} share" for c in rmap["depth_labels"]]])
            for c, mods, shares in zip(classes, rmap_sorted["modules"], rmap_sorted["shares"]):
                w.writerow([c, *mods.tolist(), *[round(float(s), 4) for s in shares]])
        files.append(out / "routing_map.csv")
        files.append(plot_routing_map(rmap_sorted, out / "routing_map.png", title=f"routing map of the {groups}{tail}",
                                      ylabel=group_name, **save))
        result["entropy"] = class_entropy(record)
    else:
        logger.info("the record has no routed layers: no overlap, routing map or entropy")
    if record.preds is not None and record.labels is not None:
        correct = np.asarray(record.preds) == np.asarray(record.labels)
        result["accuracy"] = float(correct.mean()) if len(correct) else None
        result["accuracy_per_class"] = {
            record.meta_names[m]: float(correct[record.meta == m].mean()) for m in np.unique(record.meta)
        }
    if record.dispatch is not None and group_name != "dispatch":
        stats = dispatch_statistics(record)
        result["dispatch"] = stats
        names = list(stats["distribution"])
        present = [n for n in names if sum(stats["distribution"][n])]
        counts = [stats["distribution"][n] for n in present]
        files.append(_write_matrix(out / "dispatch.csv", counts, present,
                                   [f"dispatch {k}" for k in range(stats["num_dispatch"])], group_name))
        files.append(plot_dispatch_distribution(stats, out / "dispatch.png", ylabel=group_name, **save))
    if state_dict is not None:
        result["policy_cosine"] = {}
        meta_record = meta_record if meta_record is not None else record
        present = [int(m) for m in np.unique(meta_record.meta)]
        for key, table in router_tables(state_dict).items():
            names, agents = None, None
            if table.shape[0] == len(meta_record.meta_names):  # one agent per meta class
                names, agents = meta_record.meta_names, present
            elif table.shape[0] == len(record.meta_names):  # one agent per group (e.g. per dispatch choice)
                names = record.meta_names
            pc = policy_cosine(table, names, agents, kind=policy, temperature=temperature)
            order = cluster_order(pc["cosine"])
            classes = [pc["classes"][i] for i in order]
            cos = _reorder(pc["cosine"], order)
            slug = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") or "router"
            result["policy_cosine"][key] = {"classes": classes, "cosine": cos,
                                            "greedy": {c: pc["greedy"][i] for c, i in zip(classes, order)},
                                            "kind": policy}
            files.append(_write_matrix(out / f"policy_cosine_{slug}.csv", cos, classes, classes, key))
            files.append(plot_heatmap(
                cos, classes, classes, out / f"policy_cosine_{slug}.png", cmap="magma", vmin=0.0, vmax=1.0,
                colorbar_label="cosine similarity", xlabel=group_name, ylabel=group_name,
                title=f"{policy} policy similarity of the {_router_words(key)} agents{tail}", **save,
            ))
    if vector is not None:  # the vector copy of every figure
        files += [f.with_suffix(f".{vector}") for f in files if f.suffix == ".png"]
    result["files"] = [str(f) for f in files] + [str(out / "analysis.json")]
    if "entropy" in result:
        (out / "entropy.json").write_text(json.dumps(_jsonable(
            {"selection_entropy": result["entropy"], "accuracy_per_class": result.get("accuracy_per_class")}), indent=2))
        result["files"].append(str(out / "entropy.json"))
    (out / "analysis.json").write_text(json.dumps(_jsonable(result), indent=2))
    return result


def select_grouping(record: RoutingRecord, by: str, path: Path) -> RoutingRecord:
    """The record whose ``meta`` holds the classes ``--by`` names: its routed column, or the data's own
    meta column kept beside it (a cluster-routed run grouped by signature); any other name is an error."""
    if by not in ("signature", "genre") or record.meta_column is None or record.meta_column == by:
        return record  # --by meta / dispatch, or a record of an older version (its meta column unnamed)
    if record.data_meta_column == by:
        return record.by_data_meta()
    held = " and ".join(c for c in (record.meta_column, record.data_meta_column) if c)
    raise ValueError(f"--by {by}: {path} holds {held} classes, not {by} (use --by meta"
                     + (f" or --by {record.data_meta_column}" if record.data_meta_column else "") + ")")


def analyze_run(
    run_dir: str | Path,
    by: str = "meta",
    split: str = "test",
    out_dir: str | Path | None = None,
    match: str = "depth",
    policy: str = "greedy",
    temperature: float = 1.0,
    dpi: int = 120,
    vector: str | None = "pdf",
) -> dict[str, Any]:
    """Analyse the routing of a run folder's ``routing_<split>.npz`` (and the router tables of its ``model.safetensors``).

    ``by``: ``signature``, ``genre`` or ``meta`` (the record's meta column, the name only labels
    the figures) or ``dispatch`` (the learned dispatcher's choice). ``out_dir`` defaults to
    ``run_dir/analysis_<split>_<by>``.
    """
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {GROUPINGS}, got {by!r}")
    if policy not in POLICY_KINDS:
        raise ValueError(f"policy must be one of {POLICY_KINDS}, got {policy!r}")
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    path = run / f"routing_{split}.npz"
    if not path.is_file():
        found = sorted(p.name for p in run.glob("routing_*.npz"))
        raise FileNotFoundError(f"{path} does not exist; routing records in {run}: {found or 'none'}")
    original = select_grouping(load_routing_record(path), by, path)
    record = regroup(original, "dispatch" if by == "dispatch" else "meta")
    model = run / "model.safetensors"
    if not model.is_file():
        model = run / "model.pt"  # run folders of older versions (read weights-only)
    out = Path(out_dir) if out_dir is not None else run / f"analysis_{split}_{by}"
    config = None
    if (run / "config.json").is_file():
        try:
            config = json.loads((run / "config.json").read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{run / 'config.json'} is not JSON: {err}") from None
    label = "; ".join(p for p in (describe_config(config), f"{split} split") if p)
    return analyze_record(record, out, group_name=by, match=match, state_dict=model if model.is_file() else None,
                          policy=policy, temperature=temperature, label=label, meta_record=original, dpi=dpi,
                          vector=vector)
