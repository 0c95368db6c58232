"""Learned dispatchers (basic, RBAE with four encoders, two-stage): shapes, rewards, learning, workflow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nli_routing.analysis.entropy import dispatch_statistics
from nli_routing.analysis.records import RoutingRecord
from nli_routing.models.dispatcher import ONLINE_DISPATCHERS, LearnedDispatcher, compact_vocabulary
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.experiments.nli import (
    DispatchArgs,
    align_meta,
    dispatch_method,
    resolve_method,
)
from nli_routing.training.loop import TrainConfig, make_optimizers, train

from .conftest import REPO_ROOT

VOCAB, DIM, T = 40, 12, 6
KINDS = [*ONLINE_DISPATCHERS, "two-stage"]


def embedding(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, DIM, generator=g)
    w[0] = 0
    return nn.Embedding.from_pretrained(w, freeze=True, padding_idx=0)


def two_group_batch(b=64, seed=0):
    """Premises of group 0 use tokens 1..19, of group 1 tokens 20..39; some are short."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 2, (b,), generator=g)
    ids = torch.randint(1, 20, (b, T), generator=g) + 19 * group.unsqueeze(1)
    lengths = torch.randint(2, T + 1, (b,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return ids * mask, mask, group


def make(kind, k=2, encoder=None, alpha=0.5, learner="aac", seed=0):
    vocab_map = compact_vocabulary([list(range(1, VOCAB))], VOCAB)
    return LearnedDispatcher(
        kind, embedding(), k, encoder=encoder, hidden=16, projection=16, bottleneck=4, alpha=alpha,
        vocab_map=vocab_map, learner=learner, learner_kwargs={"entropy_coef": 0.01} if learner == "aac" else {},
        seed=seed,
    )


def test_compact_vocabulary_maps_seen_tokens_and_unknown_to_zero():
    m = compact_vocabulary([[5, 3], [3, 9], []], 12)
    assert m.shape == (12,)
    assert m[3] == 1 and m[5] == 2 and m[9] == 3
    assert int(m.sum()) == 6 and m[0] == 0 and m[11] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_dispatcher_shapes_rewards_and_loss(kind):
    torch.manual_seed(0)
    d = make(kind, k=3)
    ids, mask, _ = two_group_batch(b=10)
    mask[3] = False  # an empty premise must not break any encoder
    ids[3] = 0
    out = d(ids, mask)
    assert out.meta.shape == (10,) and out.meta.dtype == torch.long
    assert int(out.meta.min()) >= 0 and int(out.meta.max()) < 3
    assert out.trajectory.actions.shape == (10, 1) and out.trajectory.num_actions == 3
    assert not out.meta.requires_grad
    if kind.startswith("rbae-"):
        assert out.recon_loss.shape == (10,) and torch.isfinite(out.recon_loss).all()
        task = torch.tensor([1.0, -1.0] * 5)
        expected = 0.5 * task - 0.5 * out.recon_loss.detach()
        torch.testing.assert_close(d.dispatch_reward(out, task), expected)
    else:
        assert out.recon_loss is None
        task = torch.ones(10)
        torch.testing.assert_close(d.dispatch_reward(out, task), task)
    loss = d.loss(out, torch.tensor([1.0, -1.0] * 5))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.policy.parameters())


def test_agent_centered_reconstruction_reward_subtracts_each_class_batch_mean():
    """recon_reward='agent-centered': R = alpha * task - (1 - alpha) * (L_i - mean of L over i's class)."""
    from nli_routing.models.dispatcher import DispatchOutput

    d = make("rbae-cbow", k=3)
    d.recon_reward = "agent-centered"
    ids, mask, _ = two_group_batch(b=5)
    out = d(ids, mask)
    rec = torch.tensor([1.0, 3.0, 10.0, 4.0, 7.0])
    meta = torch.tensor([0, 0, 1, 2, 2])  # class means 2, 10, 5.5
    out = DispatchOutput(meta, out.trajectory, rec)
    task = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])
    expected = 0.5 * task - 0.5 * torch.tensor([-1.0, 1.0, 0.0, -1.5, 1.5])
    torch.testing.assert_close(d.dispatch_reward(out, task), expected)
    # a class's bottleneck that reconstructs every sample better earns nothing from it
    shifted = DispatchOutput(meta, out.trajectory, rec - 5.0 * (meta == 2))
    torch.testing.assert_close(d.dispatch_reward(shifted, task), expected)
    with pytest.raises(ValueError, match="recon_reward must be one of"):
        LearnedDispatcher("rbae-cbow", embedding(), 2, recon_reward="centred")


@pytest.mark.parametrize(
    "kind,encoder",
    [("basic", None), ("rbae-cbow", None), ("rbae-attn", None), ("rbae-onehot", None), ("rbae-seq", None),
     ("two-stage", "cbow"), ("two-stage", "attn"), ("two-stage", "onehot"), ("two-stage", "lstm")],
)
def test_dispatcher_learns_the_rewarded_assignment(kind, encoder):
    """Known answer: the reward is +1 when group 0 goes to class 1 and group 1 to class 0."""
    torch.manual_seed(0)
    d = make(kind, k=2, encoder=encoder, alpha=0.9)
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=0.01)
    test_ids, test_mask, test_group = two_group_batch(b=200, seed=123)
    target = 1 - test_group
    d.eval()
    before = d(test_ids, test_mask).meta
    d.train()
    recon_first = recon_last = None
    for step in range(250):
        ids, mask, group = two_group_batch(b=64, seed=step)
        out = d(ids, mask)
        reward = torch.where(out.meta == 1 - group, 1.0, -1.0)
        loss = d.loss(out, reward)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if out.recon_loss is not None:
            recon_first = recon_first if recon_first is not None else float(out.recon_loss.detach().mean())
            recon_last = float(out.recon_loss.detach().mean())
    d.eval()
    after = d(test_ids, test_mask).meta
    acc = float((after == target).float().mean())
    assert acc >= 0.9, f"{kind}/{encoder}: greedy dispatch matches the rewarded assignment on {acc:.2f}"
    assert not torch.equal(before, after)  # training changed the dispatch policy
    if recon_first is not None:
        assert recon_last < recon_first, "the autoencoder's reconstruction loss did not decrease"


def test_dispatcher_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown dispatcher kind"):
        LearnedDispatcher("clusters", embedding(), 2)
    with pytest.raises(ValueError, match="alpha"):
        LearnedDispatcher("rbae-cbow", embedding(), 2, alpha=1.5)
    with pytest.raises(ValueError, match="vocab_map"):
        LearnedDispatcher("rbae-seq", embedding(), 2)
    with pytest.raises(ValueError, match="pair"):
        d = LearnedDispatcher("basic", embedding(), 2, pair=True)
        ids, mask, _ = two_group_batch(4)
        d(ids, mask)


def test_dispatch_statistics_known_answer():
    rec = RoutingRecord(meta=np.array([0, 0, 0, 1]), meta_names=["a", "b"], dispatch=np.array([0, 0, 1, 1]),
                        num_dispatch=3)
    s = dispatch_statistics(rec)
    assert s["distribution"] == {"a": [2, 1, 0], "b": [0, 1, 0]}
    assert s["entropy"] == pytest.approx(1.0)  # two of three subrouters used equally
    h_a = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert s["per_meta_entropy"] == pytest.approx(3 / 4 * h_a)
    assert s["num_dispatch"] == 3


def nli_batch(b=32, num_meta=3, seed=0):
    ids, mask, group = two_group_batch(b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {
        "premise_ids": ids,
        "premise_mask": mask,
        "hypothesis_ids": torch.randint(1, VOCAB, (b, 4), generator=g),
        "hypothesis_mask": torch.ones(b, 4, dtype=torch.bool),
        "meta": torch.randint(0, num_meta, (b,), generator=g),
        "labels": group + torch.randint(0, 2, (b,), generator=g),
    }


def tiny_model(num_meta=3, **kw):
    cfg = NLIModelConfig(num_meta=num_meta, route="wp+classifier", classifier_hidden=16, classifier_layers=1,
                         exploration="med", **kw)
    return NLIRoutingModel(cfg, embedding().weight, 0)


def test_two_stage_test_time_never_reads_meta_and_stage2_changes_only_the_dispatcher():
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():  # distinct table values: greedy routing without random tie-breaks
        for r in model.routers():
            r.table.copy_(torch.randn_like(r.table))
    dispatcher = LearnedDispatcher("two-stage", model.encoder.embedding, 3, encoder="lstm", hidden=8, projection=8)
    with pytest.raises(ValueError, match="classes"):
        model.attach_dispatcher(LearnedDispatcher("two-stage", model.encoder.embedding, 2, hidden=8, projection=8))
    model.attach_dispatcher(dispatcher)
    model.freeze_routing()
    def tensors(module):
        # weights and tables; a router's extra state (its epoch and generator) moves on with the epochs
        return {k: v.clone() for k, v in module.state_dict().items() if not k.endswith("_extra_state")}

    frozen = {k: v for k, v in tensors(model).items() if not k.startswith("dispatcher.")}
    learned = tensors(dispatcher)
    batches = [nli_batch(seed=s) for s in range(4)]
    cfg = TrainConfig(epochs=2, lr=0.01, block_optimizer="adam", progress=False, cpu=True, select_best=False)
    train(model, batches, {}, cfg)
    for k, v in tensors(model).items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"stage 2 changed the frozen {k}"
    assert any(not torch.equal(v, learned[k]) for k, v in tensors(dispatcher).items())
    # test time: the model never reads the meta labels
    model.eval()
    b = nli_batch(seed=9)
    ref = model(**b).logits
    b_none = {k: v for k, v in b.items() if k != "meta"}
    torch.testing.assert_close(model(**b_none).logits, ref)
    torch.testing.assert_close(model(**{**b, "meta": torch.full_like(b["meta"], 999)}).logits, ref)
    # detaching restores meta routing and trainability
    model.detach_dispatcher()
    assert model.dispatcher is None and all(p.requires_grad for k, p in model.named_parameters() if "table" in k or "blocks" in k)
    with pytest.raises(ValueError):
        model(**{**b, "meta": torch.full_like(b["meta"], 999)})


def test_online_dispatch_trains_model_and_dispatcher_together():
    torch.manual_seed(0)
    model = tiny_model(num_meta=2)
    vocab_map = compact_vocabulary([list(range(1, VOCAB))], VOCAB)
    model.attach_dispatcher(LearnedDispatcher("rbae-onehot", model.encoder.embedding, 2, hidden=8, projection=8,
                                              bottleneck=4, vocab_map=vocab_map))
    block_opt, router_opt = make_optimizers(model, TrainConfig(block_optimizer="adam", lr=0.01))
    routed = {id(p) for p in router_opt.param_groups[0]["params"]}
    assert all(id(p) in routed for p in model.dispatcher.policy.parameters())
    assert any(id(p) in {id(q) for q in block_opt.param_groups[0]["params"]} for p in model.dispatcher.decoder.parameters())
    out = model(**nli_batch())
    assert out.dispatch is not None
    loss = model.router_loss(out, nli_batch()["labels"])
    loss.backward()
    assert model.dispatcher.decoder.weight.grad is not None  # reconstruction reaches the autoencoder
    assert model.routed_layers[0].router.table.grad is not None  # the subrouters learn too


def test_dispatch_method_names():
    assert dispatch_method("signature") == "wp-signature"
    assert dispatch_method("signature", two_stage=True) == "wp-signature+D"
    assert dispatch_method("rbae-seq") == "wp-rbae-seq"
    with pytest.raises(ValueError, match="already a learned dispatcher"):
        dispatch_method("basic", two_stage=True)
    with pytest.raises(ValueError, match="--dispatch"):
        dispatch_method("genre-ish")
    overrides, source = resolve_method("wp-kmeans+D")
    assert overrides["two_stage"] and source == "kmeans"
    with pytest.raises(ValueError, match="no meta labels"):
        resolve_method("wp-basic+D")
    with pytest.raises(ValueError, match="dispatch_encoder"):
        DispatchArgs(dispatch_encoder="bert")


def test_align_meta_numbers_classes_alike():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from nli_routing.experiments.nli import PreparedData

    def prep(names, values):
        feats = Features({"signature": ClassLabel(names=names), "x": Value("int64")})
        ds = Dataset.from_dict({"signature": values, "x": list(range(len(values)))}, features=feats)
        return PreparedData(DatasetDict({"train": ds, "test": ds}), None, names)

    a, b = prep(["+|-", "-|+"], [0, 1, 1]), prep(["o|o", "-|+"], [0, 1])
    names = align_meta(a, b)
    assert names == ["+|-", "-|+", "o|o"]
    assert a.data["train"]["signature"] == [0, 1, 1]
    assert b.data["train"]["signature"] == [2, 1] and b.data["test"].features["signature"].names == names


def test_recipe_dispatch_and_two_stage_write_reports(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    base = [sys.executable, str(REPO_ROOT / "recipes" / "sci_wp_dispatch.py"), "--max_train_samples", "200",
            "--epochs", "1", "--cpu", "--progress", "False", "--embeddings", "random:16"]
    for args, method in [(["--dispatch", "rbae-attn"], "wp-rbae-attn"),
                         (["--dispatch", "signature", "--two_stage", "--stage2_epochs", "1"], "wp-signature+D")]:
        out = tmp_path / method
        proc = subprocess.run(base + args + ["--output_dir", str(out)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((out / method / "dispatch_report.json").read_text())
        assert report["split"] == "test" and 0.0 <= report["entropy"] <= np.log2(report["num_dispatch"]) + 1e-6
        assert sum(map(sum, report["distribution"].values())) == 500  # every test sample dispatched once
        assert (out / method / "dispatch_report.png").stat().st_size > 1000
    bad = subprocess.run(base + ["--dispatch", "basic", "--two_stage"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "already a learned dispatcher" in bad.stderr


@pytest.mark.parametrize("method", ["wp-signature", "wp-kmeans", "wp-rbae-cbow", "wp-signature+D"])
def test_nested_finetuning_continues_the_joint_model(method):
    """Thesis: a model trained on joint is fine-tuned on the nested variant (signatures aligned by name)."""
    from nli_routing.experiments.nli import DEFAULT_DATA_DIR, RECIPE_TRAIN_DEFAULTS, DataArgs, prepare_sci, run_method

    joint = prepare_sci(DataArgs(data_dir=str(DEFAULT_DATA_DIR), embeddings="random:8", max_train_samples=150))
    nested = prepare_sci(DataArgs(data_dir=str(DEFAULT_DATA_DIR.parent / "nested"), embeddings="random:8",
                                  max_train_samples=150))
    names = align_meta(joint, nested)
    assert set(nested.meta_names) <= set(names) and joint.meta_names == names
    cfg = TrainConfig(epochs=1, progress=False, cpu=True, **RECIPE_TRAIN_DEFAULTS)
    res = run_method(method, joint, NLIModelConfig(classifier_hidden=16, classifier_layers=1), cfg,
                     dispatch_args=DispatchArgs(stage2_epochs=1), finetune=nested, finetune_epochs=1)
    ft = res["finetune"]
    assert ft["final"]["test"]["n"] == len(nested.data["test"])
    assert 0.0 <= ft["summary"]["test_accuracy"] <= 1.0
    if method.endswith("+D") or "rbae" in method:
        assert "dispatch" in ft["final"]["test"]  # the nested test set was dispatched, not read from meta


def test_the_recipes_dispatcher_defaults_resolve_per_kind():
    """Issue 29: two-stage dispatch imitates stage 1's meta labels from the whole pair (no MI term); the
    online dispatchers keep the RL reward on the premise with the MI term and a standardised agent input;
    the thesis' training by flags."""
    from nli_routing.experiments.nli import DispatchArgs

    d = DispatchArgs()
    enc = {"state_norm": False, "agent_to_encoder": True}
    assert d.resolved("two-stage") == {"input": "pair", "target": "meta", "balance": 0.0, "balance_term": "mi", **enc}
    for kind in ONLINE_DISPATCHERS:
        own = {"state_norm": True, "agent_to_encoder": kind in ("basic", "rbae-seq")}
        assert d.resolved(kind) == {"input": "premise", "target": "reward", "balance": 1.0, "balance_term": "mi", **own}
        # the mixture target: the load balance (marginal entropy) at 0.1 unless set
        mix = DispatchArgs(dispatch_target="mixture").resolved(kind)
        assert (mix["balance"], mix["balance_term"]) == (0.1, "marginal")
        assert DispatchArgs(dispatch_target="mixture", dispatch_balance=0.0,
                            dispatch_balance_term="mi").resolved(kind)["balance_term"] == "mi"
    thesis = DispatchArgs(dispatch_input="premise", dispatch_target="reward", dispatch_balance=0.0,
                          dispatch_agent_optimizer="routers", dispatch_state_norm=False, dispatch_agent_to_encoder=False)
    assert thesis.resolved("two-stage") == {"input": "premise", "target": "reward", "balance": 0.0, "balance_term": "mi",
                                            "state_norm": False, "agent_to_encoder": False}
    assert thesis.resolved("rbae-seq")["agent_to_encoder"] is False
    # the thesis preset sets no state norm; rbae-seq's encoder then learns from the reconstruction only
    preset = DispatchArgs(dispatch_state_norm=False)
    assert preset.resolved("rbae-seq") == {**d.resolved("rbae-seq"), "state_norm": False, "agent_to_encoder": False}
    assert preset.resolved("basic")["agent_to_encoder"] is True
    assert all(preset.resolved(kind)["state_norm"] is False for kind in ONLINE_DISPATCHERS)


def test_state_norm_standardises_the_agent_input_and_starts_its_statistics_at_the_first_batch():
    """state_norm: in training the agent reads z standardised by the batch's statistics; the running
    statistics start at the first batch's (not at mean 0 / variance 1), so evaluation on that batch
    reads the same standardised input; a batch of one uses the running statistics."""
    d = LearnedDispatcher("rbae-cbow", embedding(), 3, hidden=16, projection=16, bottleneck=4, state_norm=True)
    z = 0.01 * torch.randn(32, 16) + 0.5  # a small spread around a large shared part, like the encoders'
    d.train()
    a = d.agent_state(z)
    torch.testing.assert_close(a, (z - z.mean(0)) / z.var(0, unbiased=False).add(1e-8).sqrt(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(d.state_norm.running_mean, z.mean(0))
    d.eval()
    torch.testing.assert_close(d.agent_state(z), (z - z.mean(0)) / z.var(0).add(1e-8).sqrt(), rtol=1e-3, atol=1e-3)
    d.train()
    one = d.agent_state(z[:1])
    torch.testing.assert_close(one, (z[:1] - z.mean(0)) / z.var(0).add(1e-8).sqrt(), rtol=1e-3, atol=1e-3)
    assert LearnedDispatcher("rbae-cbow", embedding(), 3, projection=16).agent_state(z) is z  # off by default


@pytest.mark.parametrize("kind,flag,detached", [("rbae-attn", None, True), ("rbae-seq", None, False),
                                               ("rbae-attn", True, False), ("rbae-seq", False, True)])
def test_the_agent_reaches_the_rbae_encoder_only_when_asked(kind, flag, detached):
    """--dispatch_agent_to_encoder: the agent's loss trains the RBAE encoder (default: reconstruction only,
    but for rbae-seq)."""
    vocab_map = compact_vocabulary([list(range(1, VOCAB))], VOCAB)
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=2), embedding().weight, pad_id=0)
    d = DispatchArgs(dispatch_agent_to_encoder=flag, dispatch_state_norm=True).build(kind, model, 2, vocab_map, 0)
    assert d.policy.detach_state is detached and d.state_norm is not None
    ids, mask, _ = two_group_batch(b=16)
    out = d(ids, mask)
    for p in d.parameters():
        p.grad = None
    d.loss(without_reconstruction(out), torch.ones(16)).backward()
    enc_grad = sum(float(p.grad.abs().sum()) for p in d.encoder.parameters() if p.grad is not None)
    assert (enc_grad == 0.0) is detached


def without_reconstruction(out):
    """The dispatch without its reconstruction loss: only the agent's loss (and the MI term) remain."""
    from nli_routing.models.dispatcher import DispatchOutput

    return DispatchOutput(out.meta, out.trajectory, None)


def test_em_posterior_is_the_prior_times_the_likelihood_of_the_gold_label():
    """Issue 29, generalised EM (Kirsch et al. 2018): q(k) ~ pi(k | x) exp(-loss_k)."""
    from nli_routing.models.dispatcher import em_posterior, em_posterior_sample

    values = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    losses = torch.tensor([[np.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float32)
    q = em_posterior(values + 7.0, losses)  # values are logits: a shift changes nothing
    assert torch.allclose(q[0], torch.full((3,), 1 / 3), atol=1e-6)  # 0.5 * 1/2 = 0.25 * 1 = 0.25 * 1
    assert torch.allclose(q[1], torch.tensor([0.2, 0.3, 0.5]), atol=1e-6)  # equal losses: the prior
    g = torch.Generator().manual_seed(0)
    n = 40_000
    draws = em_posterior_sample(values[1:].expand(n, 3), losses[1:].expand(n, 3), g)
    freq = torch.bincount(draws, minlength=3).float() / n
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.01)
    lopsided = em_posterior_sample(torch.zeros(5, 3), torch.tensor([[9.0, 0.0, 9.0]]).expand(5, 3), g)
    assert lopsided.tolist() == [1] * 5


def test_the_em_target_routes_the_model_on_the_drawn_class():
    d = make("basic", k=3)
    d.dispatch_target = "em"
    ids, mask, _ = two_group_batch(16)
    out = d(ids, mask)
    losses = torch.full((16, 3), 20.0)
    losses[:, 2] = 0.0  # only class 2's path explains the labels
    d.fill_target(out, None, lambda: losses)
    assert out.target.tolist() == [2] * 16 and out.meta.tolist() == [2] * 16
    assert torch.equal(out.agent_losses, losses)
    loss = d.loss(out, torch.zeros(16))
    assert torch.isfinite(loss) and loss.requires_grad


def test_the_em_target_needs_an_online_dispatcher():
    with pytest.raises(ValueError, match="target 'em'.*online dispatcher"):
        LearnedDispatcher("two-stage", embedding(), 2, target="em")
    with pytest.raises(ValueError, match="dispatch_target em.*online"):
        DispatchArgs(dispatch_target="em").check_method("wp-signature+D")
    with pytest.raises(ValueError, match="dispatch_target em.*online"):
        DispatchArgs(dispatch_target="em").check_method("wp-signature")
    with pytest.raises(ValueError, match="dispatch_target must be one of"):
        DispatchArgs(dispatch_target="EM")
