"""Issue 32: the thesis' settings as options beside today's defaults, each checked against the seed's
description (exploration schedules of Figure 7.6, router learning rates below the blocks' of Figure 7.7,
the optimizers of Figure 7.12, RBAE-CBOW's sum of eq. 6.4, routing-policy perplexity)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from nli_routing.analysis.overlap import class_entropy, perplexity
from nli_routing.analysis.records import LayerRecord, RoutingRecord
from nli_routing.models.dispatcher import CBOWFeatures, LearnedDispatcher
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.routing import EXPLORATION_PRESETS, get_schedule
from nli_routing.routing.routers import TabularRouter
from nli_routing.training.loop import OPTIMIZERS, TrainConfig, make_optimizers

from .helpers import weight


# --------------------------------------------------------------------------- Figure 7.6: exploration schedules
#: "anneal every 5 epochs by a factor of 4": high 0.5 -> 0.01, med 0.25 -> 0.005, low 0.1 -> 0.002
FIGURE_7_6 = {"thesis-high": (0.5, 0.01), "thesis-med": (0.25, 0.005), "thesis-low": (0.1, 0.002)}


@pytest.mark.parametrize("preset", sorted(FIGURE_7_6))
def test_thesis_schedules_divide_epsilon_by_four_every_five_epochs(preset):
    start, floor = FIGURE_7_6[preset]
    schedule = EXPLORATION_PRESETS[preset]
    eps = [schedule.epsilon(e) for e in range(31)]
    assert eps[0] == eps[4] == start  # constant within the first 5 epochs
    assert eps[5] == pytest.approx(start / 4) and eps[9] == eps[5]
    assert eps[10] == pytest.approx(start / 16)
    assert eps[30] == floor and min(eps) == floor  # annealed down to the figure's final value, not below
    assert all(a >= b for a, b in zip(eps, eps[1:]))


def test_a_schedule_written_out_on_the_command_line_is_the_same_schedule():
    assert get_schedule("0.5/0.25/5/0.01") == EXPLORATION_PRESETS["thesis-high"]
    router = TabularRouter(num_meta=2, depth=1, num_actions=3, exploration="0.25/0.25/5/0.005")
    router.train()
    router.set_epoch(0)
    assert router.epsilon == 0.25
    router.set_epoch(5)
    assert router.epsilon == pytest.approx(0.0625)
    router.eval()
    assert router.epsilon == 0.0
    cfg = NLIModelConfig(exploration="0.5/0.25/5/0.01")  # accepted by the configs and saved as written
    assert cfg.exploration == "0.5/0.25/5/0.01"


@pytest.mark.parametrize("spec,message", [
    ("0.5/0.25/x/0.01", r"expected START/ANNEAL/EVERY/FLOOR"),
    ("0.5/0.25/5", r"expected START/ANNEAL/EVERY/FLOOR"),
    ("0.5/2/5/0.01", r"anneal must be in \(0, 1\]"),
    ("0.01/0.25/5/0.5", r"need 0 <= floor <= start <= 1"),
])
def test_a_bad_schedule_is_refused_naming_it(spec, message):
    with pytest.raises(ValueError, match=message):
        NLIModelConfig(exploration=spec)


# --------------------------------------------------------------------------- Figure 7.7: router learning rates
@pytest.mark.parametrize("ratio", [0.1, 1.0, 10.0])
def test_the_router_learning_rate_may_be_below_the_blocks(ratio):
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=3), weight(), pad_id=0)
    block_opt, router_opt = make_optimizers(model, TrainConfig(lr=0.02, router_lr_ratio=ratio))
    assert block_opt.param_groups[0]["lr"] == 0.02
    assert router_opt.param_groups[0]["lr"] == pytest.approx(0.02 * ratio)


@pytest.mark.parametrize("ratio", [0.0, -1.0, float("nan")])
def test_a_router_learning_rate_ratio_must_be_positive(ratio):
    with pytest.raises(ValueError, match="router_lr_ratio must be a number > 0"):
        TrainConfig(router_lr_ratio=ratio)


# --------------------------------------------------------------------------- Figure 7.12: optimizers
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_for_blocks_and_routers(name):
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop,
               "adagrad": torch.optim.Adagrad}
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=3), weight(), pad_id=0)
    block_opt, router_opt = make_optimizers(model, TrainConfig(block_optimizer=name, router_optimizer=name))
    assert type(block_opt) is classes[name] and type(router_opt) is classes[name]
    router_ids = {id(p) for p in model.router_parameters()}
    assert {id(p) for g in router_opt.param_groups for p in g["params"]} == router_ids
    assert not router_ids & {id(p) for g in block_opt.param_groups for p in g["params"]}


def test_the_default_router_optimizer_is_the_learners_sgd_step():
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=3), weight(), pad_id=0)
    _, router_opt = make_optimizers(model, TrainConfig())
    assert type(router_opt) is torch.optim.SGD and router_opt.param_groups[0]["momentum"] == 0


@pytest.mark.parametrize("field", ["block_optimizer", "router_optimizer"])
@pytest.mark.parametrize("value", ["bogus", "Adam"])
def test_an_unknown_optimizer_is_refused(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be one of \('sgd', 'adam', 'rmsprop', 'adagrad'\)"):
        TrainConfig(**{field: value})


# --------------------------------------------------------------------------- eq. 6.4: RBAE-CBOW sums the word vectors
def _embedding() -> nn.Embedding:
    w = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    w[0] = 0
    return nn.Embedding.from_pretrained(w, freeze=True, padding_idx=0)


def test_the_cbow_encoder_sums_or_averages_the_real_tokens():
    emb = _embedding()
    ids = torch.tensor([[3, 5, 7, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    mask = ids != 0
    total = CBOWFeatures(emb, pool="sum")(ids, mask)
    mean = CBOWFeatures(emb)(ids, mask)
    assert torch.allclose(total[0], emb.weight[3] + emb.weight[5] + emb.weight[7])  # eq. 6.4: the sum
    assert torch.allclose(mean[0], total[0] / 3) and torch.allclose(total[1], emb.weight[2])
    assert torch.equal(total[2], torch.zeros(6)) and torch.equal(mean[2], torch.zeros(6))


def test_an_rbae_cbow_dispatcher_keeps_its_pooling_when_saved():
    emb = _embedding()
    summed = LearnedDispatcher("rbae-cbow", emb, 3, cbow_pool="sum")
    assert summed.encoder.pool == "sum" and summed.target.pool == "sum"
    rebuilt = LearnedDispatcher.from_config(emb, summed.to_config())
    assert rebuilt.encoder.pool == "sum" and rebuilt.target.pool == "sum"
    old = {k: v for k, v in LearnedDispatcher("rbae-cbow", emb, 3).to_config().items()}
    assert "cbow_pool" not in old  # folders saved before the option rebuild their mean encoder
    assert LearnedDispatcher.from_config(emb, old).encoder.pool == "mean"
    with pytest.raises(ValueError, match=r"cbow_pool must be one of \('mean', 'sum'\), got 'max'"):
        LearnedDispatcher("rbae-cbow", emb, 3, cbow_pool="max")


# --------------------------------------------------------------------------- routing-policy perplexity
def test_perplexity_is_the_effective_number_of_blocks():
    assert perplexity([0.0]) == 1.0  # one block takes everything
    assert perplexity([2.0]) == 4.0  # four blocks equally
    assert perplexity([0.0, 2.0]) == 2.5  # averaged over depths


def test_analyze_reports_perplexity_beside_entropy():
    n = 400
    rng = np.random.default_rng(0)
    meta = np.repeat([0, 1], n // 2)
    spread = rng.integers(0, 4, size=(n // 2, 1))  # class a: uniform over 4 blocks
    actions = np.concatenate([spread, np.full((n // 2, 1), 2)])  # class b: always block 2
    record = RoutingRecord(meta=meta, meta_names=["a", "b"],
                           layers=[LayerRecord("wp", 4, actions, np.ones_like(actions, dtype=bool))])
    stats = class_entropy(record)["wp"]
    assert stats["perplexity_by_class"]["b"] == 1.0
    assert stats["perplexity_by_class"]["a"] == pytest.approx(4.0, abs=0.05)
    assert stats["perplexity"] == pytest.approx(2 ** stats["per_depth"][0])
    assert 2.0 < stats["perplexity"] < 4.0 and math.isfinite(stats["perplexity"])


# --------------------------------------------------------------------------- --preset thesis
def _sci_parse(argv):
    from recipes.sci_wp_dispatch import RecipeArgs

    from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, DataArgs, DispatchArgs
    from nli_routing.experiments.recipe import parse_recipe

    return parse_recipe((RecipeArgs, DataArgs, NLIModelConfig, TrainConfig, DispatchArgs), RECIPE_TRAIN_DEFAULTS,
                        argv, prog="sci_wp_dispatch.py", preset_family="nli")


def _image_parse(argv):
    import recipes.image_mtl as image

    from nli_routing.experiments.image import IMAGE_TRAIN_DEFAULTS, ImageDataArgs
    from nli_routing.experiments.recipe import parse_recipe

    return parse_recipe((ImageDataArgs, image.RecipeArgs, image.ModelArgs, TrainConfig), IMAGE_TRAIN_DEFAULTS, argv,
                        prog="image_mtl.py", preset_family="image")


def _value(parsed, name):
    return getattr(next(a for a in parsed if hasattr(a, name)), name)


@pytest.mark.parametrize("family,parse", [("nli", _sci_parse), ("image", _image_parse)])
def test_the_thesis_preset_sets_each_of_its_settings_and_a_flag_still_wins(family, parse, caplog):
    from nli_routing.experiments.presets import PRESETS

    preset = PRESETS["thesis"][family]
    parser, plain = parse(["--output_dir", "/tmp/never"])
    known = {a.dest for a in parser._actions}
    assert set(preset) <= known, f"preset settings that are no flag of the recipe: {set(preset) - known}"
    changed = [k for k, (v, _) in preset.items() if _value(plain, k) != v]
    assert changed, "the preset changes nothing"
    with caplog.at_level("INFO"):
        _, thesis = parse(["--preset", "thesis", "--output_dir", "/tmp/never"])
    for key, (value, source) in preset.items():
        assert _value(thesis, key) == value, key
        assert source  # every setting names where the seeds state it
    assert "preset thesis: " in caplog.text
    _, mixed = parse(["--preset=thesis", "--lr", "0.3", "--output_dir", "/tmp/never"])
    assert _value(mixed, "lr") == 0.3 and all(_value(mixed, k) == v for k, (v, _) in preset.items() if k != "lr")


def test_the_thesis_preset_builds_the_thesis_models():
    _, (_, _, model_cfg, train_cfg, dispatch) = _sci_parse(["--preset", "thesis", "--output_dir", "/tmp/never"])
    model = NLIRoutingModel(model_cfg.__class__(**{**model_cfg.to_dict(), "num_meta": 13}), weight(), pad_id=0)
    assert model.config.wp_width == 15 and model.config.wp_depth == 3 and not model.config.wp_residual
    learner = model.routers()[0].learner
    assert (learner.target, learner.ties, learner.batch_mean) == ("td", "random", "state-action")
    assert (dispatch.dispatch_target, dispatch.dispatch_input, dispatch.dispatch_balance) == ("reward", "premise", 0.0)
    assert train_cfg.block_optimizer == "sgd"


@pytest.mark.parametrize("argv,message", [
    (["--preset", "bogus"], r"argument --preset: invalid choice: 'bogus'|--preset must be one of \['thesis'\]"),
    (["--preset"], r"--preset needs a name"),
])
def test_a_bad_preset_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _sci_parse(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_the_readme_lists_every_setting_of_the_preset():
    from nli_routing.experiments.presets import PRESETS

    from .conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## The thesis' configuration in one flag"):]
    section = section[: section.index("\n## ", 4)]
    for family, settings in PRESETS["thesis"].items():
        for key, (value, _) in settings.items():
            assert f"`--{key}" in section, f"README preset table lacks {family} {key}"


# --------------------------------------------------------------------------- 5.3.2: keyword tokens in front of each sentence
def _keyword_batch(b=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(1, 40, (b, t), generator=g)
    h = torch.randint(1, 40, (b, t - 2), generator=g)
    p[0, 3:] = 0  # a short premise (right padding)
    return {"premise_ids": p, "premise_mask": p != 0, "hypothesis_ids": h, "hypothesis_mask": h != 0,
            "meta": torch.tensor([0, 1, 2, 1])}


@pytest.mark.parametrize("route", ["none", "projection"])
@pytest.mark.parametrize("pool", ["sum", "mean"])
def test_cbow_keyword_tokens_are_pooled_with_the_words_of_both_sentences(route, pool):
    torch.manual_seed(0)
    model = NLIRoutingModel(NLIModelConfig(route=route, num_meta=3, meta_keyword=True, meta_keyword_mode="tokens",
                                           pool=pool), weight(), pad_id=0).eval()
    enc, batch = model.encoder, _keyword_batch()
    p_enc, h_enc, _ = enc(**batch)
    for ids, mask, got in ((batch["premise_ids"], batch["premise_mask"], p_enc),
                           (batch["hypothesis_ids"], batch["hypothesis_mask"], h_enc)):
        for i in range(ids.shape[0]):
            tokens = torch.cat([enc.keyword.weight[batch["meta"][i]].unsqueeze(0), enc.embedding(ids[i][mask[i]])])
            if enc.projection is not None:
                tokens = enc.projection(tokens)
            want = tokens.sum(0) if pool == "sum" else tokens.mean(0)
            torch.testing.assert_close(got[i], want)
    # the hypothesis sees the keyword too (the vector mode adds it to the premise only)
    other = {**batch, "meta": torch.tensor([2, 2, 0, 0])}
    assert not torch.allclose(enc(**other)[1], h_enc)


def test_the_keyword_vector_mode_is_unchanged_and_tokens_refuse_a_routed_projection():
    torch.manual_seed(0)
    model = NLIRoutingModel(NLIModelConfig(route="none", num_meta=3, meta_keyword=True), weight(), pad_id=0).eval()
    enc, batch = model.encoder, _keyword_batch()
    p_enc, h_enc, _ = enc(**batch)
    bag = enc.bag(enc.embedding(batch["premise_ids"]), batch["premise_mask"])
    torch.testing.assert_close(p_enc, bag + enc.keyword(batch["meta"]))
    torch.testing.assert_close(h_enc, enc.bag(enc.embedding(batch["hypothesis_ids"]), batch["hypothesis_mask"]))
    with pytest.raises(ValueError, match="meta_keyword_mode 'tokens' is the unrouted baseline's"):
        NLIModelConfig(route="wp", meta_keyword=True, meta_keyword_mode="tokens")
    with pytest.raises(ValueError, match=r"meta_keyword_mode must be one of \('vector', 'tokens'\), got 'words'"):
        NLIModelConfig(meta_keyword_mode="words")


def test_lstm_keyword_tokens_enter_both_sentences_as_an_input_step():
    from nli_routing.models.lstm import LSTMModelConfig, LSTMNLIModel

    torch.manual_seed(0)
    cfg = LSTMModelConfig(route="none", lstm_route="none", num_meta=3, meta_keyword=True, meta_keyword_mode="tokens",
                          lstm_hidden=8, classifier_hidden=8)
    model = LSTMNLIModel(cfg, weight(), pad_id=0).eval()
    enc, batch = model.encoder, _keyword_batch()
    assert enc.keyword.weight.shape == (3, weight().shape[1])  # a token of the input's size, not of the hidden's
    p_enc, h_enc, _ = enc(**batch)
    # sample by sample: the keyword vector is the first input step, then the words
    for i in range(batch["meta"].shape[0]):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        alone_p, alone_h, _ = enc(**one)
        torch.testing.assert_close(alone_p[0], p_enc[i], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        enc.keyword.weight[1] += 1.0  # only the samples of meta 1 change, in both sentences
    p2, h2, _ = enc(**batch)
    changed = [not torch.allclose(p2[i], p_enc[i]) and not torch.allclose(h2[i], h_enc[i]) for i in range(4)]
    assert changed == [False, True, False, True]
    out = model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- DBSCAN among the offline clusterings
def test_dbscan_finds_the_number_of_clusters_and_assigns_noise_to_the_nearest():
    from nli_routing.dispatch.offline import OfflineDispatcher

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([c + rng.normal(0, 0.3, size=(60, 2)) for c in centres] + [np.array([[5.0, 5.0], [-6.0, 9.0]])])
    d = OfflineDispatcher("dbscan", k=99, min_samples=5).fit(X)  # k is found, not given
    assert d.k == 3 and 2 <= d.noise_ <= 12  # the two far rows, and a few blob edges beyond the 0.9-quantile eps
    order = np.argsort(d.centroids_[:, 0] * 10 + d.centroids_[:, 1])
    np.testing.assert_allclose(d.centroids_[order], centres[[0, 2, 1]], atol=0.2)
    labels = d.predict(X)
    assert len(set(labels[:60])) == len(set(labels[60:120])) == len(set(labels[120:180])) == 1
    assert labels[181] == labels[120]  # the noise row near (0, 10) goes to that cluster
    again = OfflineDispatcher.from_state_dict(d.state_dict())
    assert again.k == 3 and again.min_samples == 5 and np.array_equal(again.predict(X), labels)
    with pytest.raises(ValueError, match=r"dbscan found no cluster at eps=0.001, min_samples=5"):
        OfflineDispatcher("dbscan", eps=0.001).fit(X)
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        OfflineDispatcher("dbscan", eps=0.0)


def test_wp_dbscan_runs_as_a_method(tmp_path):
    from nli_routing.experiments.nli import DataArgs, prepare_sci, run_method

    res = run_method("wp-dbscan", prepare_sci(DataArgs(max_train_samples=200, allow_unseen_meta=True)),
                     NLIModelConfig(classifier_hidden=8), TrainConfig(epochs=1, batch_size=64, seed=0, progress=False),
                     3, tmp_path / "wp-dbscan")
    model = NLIRoutingModel.from_pretrained(tmp_path / "wp-dbscan")
    assert model.meta_source == "centroids" and model.config.num_meta >= 1
    assert res["final"]["test"]["accuracy"] >= 0.0


# --------------------------------------------------------------------------- 5.3.1.1: classifier paths up to d with stop
def test_the_set_classifier_takes_paths_up_to_d_through_one_set_of_blocks_with_stop():
    torch.manual_seed(0)
    cfg = NLIModelConfig(route="classifier", num_meta=2, classifier_paths="set", classifier_layers=3,
                         classifier_width=4, classifier_hidden=8, exploration="none", router_balance_share=1.0)
    model = NLIRoutingModel(cfg, weight(), pad_id=0).eval()
    layer = model.classifier.routed
    assert layer.recursive and layer.allow_stop and layer.depth == 3 and layer.num_actions == 5  # 4 blocks + stop
    with torch.no_grad():  # agent 0: block 2, then stop; agent 1: blocks 1, 3, 0 (the whole length)
        layer.router.table.fill_(-1.0)
        layer.router.table[0, 0, 2] = layer.router.table[0, 1, 4] = 1.0
        layer.router.table[1, 0, 1] = layer.router.table[1, 1, 3] = layer.router.table[1, 2, 0] = 1.0
    batch = {**_keyword_batch(), "meta": torch.tensor([0, 1, 0, 1])}
    out = model(**batch)
    actions = out.trajectories[-1].actions
    assert actions[0, :2].tolist() == [2, 4] and actions[1].tolist() == [1, 3, 0]
    with torch.no_grad():  # by hand: entry layer, then the chosen blocks of the one set, then the shared output layer
        inputs = tuple(batch[k] for k in ("premise_ids", "premise_mask", "hypothesis_ids", "hypothesis_mask"))
        p, h, _ = model.encoder(*inputs, batch["meta"])
        x = model.classifier.entry(model.pair(model.norm(p), model.norm(h)))
        bank = layer.step_blocks(0)
        assert all(layer.step_blocks(t) is bank for t in range(3))  # one set of blocks at every step
        stopped = bank.block_forward(x[:1], 2)  # after the stop: nothing more
        full = bank.block_forward(bank.block_forward(bank.block_forward(x[1:2], 1), 3), 0)
    torch.testing.assert_close(out.logits[0], model.classifier.out(stopped)[0])
    torch.testing.assert_close(out.logits[1], model.classifier.out(full)[0])
    with pytest.raises(ValueError, match=r"classifier_paths must be one of \('per-layer', 'set'\), got 'tree'"):
        NLIModelConfig(classifier_paths="tree")


# --------------------------------------------------------------------------- Task Routing Layer: the authors' sigma
def _trl_masks(**cfg):
    from nli_routing.models.vision import TaskRoutingMask, VisionMTLConfig, VisionMTLModel

    model = VisionMTLModel(VisionMTLConfig(method="task-routing-layer", num_meta=3, conv_layers=2, conv_channels=10,
                                           fc_hidden=8, **cfg))
    return [m.masks for m in model.modules() if isinstance(m, TaskRoutingMask)]


def test_knockout_sigma_switches_off_that_share_of_units_per_task_and_zero_masks_nothing():
    masks = _trl_masks(sigma=0.3, sigma_mode="knockout")
    assert masks and all(((1 - m).sum(1) == 3).all() for m in masks)  # 3 of 10 units off for every task
    assert all(torch.equal(m, torch.ones_like(m)) for m in _trl_masks(sigma=0.0, sigma_mode="knockout"))
    keep = _trl_masks(sigma=0.3)  # the library's reading: 3 of 10 kept
    assert all((m.sum(1) == 3).all() for m in keep)
    from nli_routing.models.vision import VisionMTLConfig

    with pytest.raises(ValueError, match=r"sigma must be in \[0, 1\) \(the share of units a task's mask switches off\)"):
        VisionMTLConfig(method="task-routing-layer", sigma=1.0, sigma_mode="knockout")
    with pytest.raises(ValueError, match=r"sigma_mode must be one of \('keep', 'knockout'\), got 'share'"):
        VisionMTLConfig(sigma_mode="share")
