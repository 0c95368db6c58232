"""Reliability of the training loop: exact checkpoint/resume, NaN/inf guards, per-group clipping."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

import nli_routing.models.base as routed_base
from nli_routing.data.encoding import NLICollator
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.training import loop, numerics
from nli_routing.serialization import CheckpointError
from nli_routing.training.checkpoint import CHECKPOINT_DIR, latest_checkpoint
from nli_routing.training.loop import NonFiniteError, TrainConfig, make_optimizers, train, train_step

from .helpers import batch, weight

N_TRAIN, BATCH, EPOCHS = 40, 8, 3  # 5 batches per epoch, 15 steps
STEPS_PER_EPOCH = N_TRAIN // BATCH


class Killed(RuntimeError):
    """Stands for the process being killed."""


def rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {"premise_ids": torch.randint(1, 50, (4,), generator=g).tolist(),
         "hypothesis_ids": torch.randint(1, 50, (3,), generator=g).tolist(),
         "label": int(torch.randint(0, 3, (1,), generator=g)), "signature": i % 3}
        for i in range(n)
    ]


def loaders():
    collate = NLICollator(0, "signature")
    train_loader = DataLoader(rows(N_TRAIN, 0), batch_size=BATCH, shuffle=True, collate_fn=collate)
    evals = {split: DataLoader(rows(16, seed), batch_size=8, collate_fn=collate)
             for split, seed in (("validation", 1), ("test", 2))}
    return train_loader, evals


def build_model(learner):
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route="wp+classifier", wp_width=2, wp_depth=2, classifier_hidden=8,
                         classifier_width=2, classifier_layers=1, learner=learner, exploration="high", rho=0.3)
    return NLIRoutingModel(cfg, weight(), pad_id=0)


def run(learner, out, monkeypatch=None, kill_at=None, **cfg_kw):
    """A fresh model and loaders (a fresh process); ``kill_at``: raise before that global step.

    Returns ``(result, model, steps)``; ``steps`` are the global steps this call trained."""
    model = build_model(learner)
    train_loader, evals = loaders()
    done = []

    def step(*args, **kwargs):
        s = args[6] if len(args) > 6 else kwargs.get("step", 0)
        if s == kill_at:
            raise Killed(f"killed before step {s}")
        done.append(s)
        return train_step(*args, **kwargs)

    if monkeypatch is not None:
        monkeypatch.setattr(loop, "train_step", step)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.2, cpu=True, progress=False, seed=0, **cfg_kw)
    try:
        result = train(model, train_loader, evals, cfg, output_dir=out)
    finally:
        if monkeypatch is not None:
            monkeypatch.setattr(loop, "train_step", train_step)
    return result, model, done


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        x, y = sa[key], sb[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:  # a router's extra state: exploration epoch and generator
            assert x["epoch"] == y["epoch"], key
            assert torch.equal(x["generator"], y["generator"]), key


@pytest.mark.parametrize("learner", ["qlearning", "aac"])
@pytest.mark.parametrize(
    "every,kill_at,resume_step",
    [
        (2, 8, 8),  # mid-epoch: the checkpoint of step 8 is 3 batches into epoch 1
        (0, 12, 10),  # epoch boundary: only end-of-epoch checkpoints, the last one after epoch 1
    ],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch, learner, every, kill_at,
                                                             resume_step):
    ref_result, ref_model, ref_steps = run(learner, tmp_path / "ref", monkeypatch)
    assert ref_steps == list(range(EPOCHS * STEPS_PER_EPOCH))

    with pytest.raises(Killed):
        run(learner, tmp_path / "run", monkeypatch, kill_at=kill_at, checkpoint=True, checkpoint_every=every)
    ckpt = latest_checkpoint(tmp_path / "run" / CHECKPOINT_DIR)
    assert ckpt is not None and ckpt.name == f"step_{resume_step}"
    assert len(list((tmp_path / "run" / CHECKPOINT_DIR).glob("step_*"))) <= 2  # keep_checkpoints=2

    result, model, steps = run(learner, tmp_path / "run", monkeypatch, checkpoint=True, checkpoint_every=every,
                               resume_from="latest")
    assert steps == list(range(resume_step, EPOCHS * STEPS_PER_EPOCH))  # nothing trained twice
    assert_same_state(model, ref_model)  # router tables, critics, running shares, generators, blocks
    for r, ref in zip(model.routers(), ref_model.routers()):
        assert torch.equal(r.table, ref.table)
    assert result["final"] == ref_result["final"]  # test and validation metrics at the best epoch
    assert result["best_epoch"] == ref_result["best_epoch"]
    assert result["history"] == ref_result["history"]  # training losses and validation every epoch


def test_the_best_epoch_state_survives_a_resume(tmp_path, monkeypatch):
    # validation accuracy falls every epoch: epoch 0 is the best, so the final test metrics and
    # weights come from the best-epoch copy that the checkpoint carried over the interruption
    monkeypatch.setattr(loop, "evaluate", lambda model, *a, **k: {"accuracy": -float(model.routers()[0].epoch)})
    ref_result, ref_model, _ = run("aac", tmp_path / "ref", monkeypatch)
    assert ref_result["best_epoch"] == 0
    with pytest.raises(Killed):
        run("aac", tmp_path / "run", monkeypatch, kill_at=13, checkpoint=True, checkpoint_every=3)
    result, model, steps = run("aac", tmp_path / "run", monkeypatch, checkpoint=True, checkpoint_every=3,
                               resume_from="latest")
    assert steps[0] == 12 and result["best_epoch"] == 0
    assert_same_state(model, ref_model)
    assert result["final"] == ref_result["final"] and result["history"] == ref_result["history"]


def test_resume_from_an_explicit_checkpoint_and_latest_without_one(tmp_path, monkeypatch):
    run("qlearning", tmp_path / "a", checkpoint=True, checkpoint_every=4, keep_checkpoints=3)
    names = sorted(p.name for p in (tmp_path / "a" / CHECKPOINT_DIR).iterdir())
    assert names == ["step_10", "step_12", "step_15"]  # the last 3, no temporary folder left
    _, _, steps = run("qlearning", tmp_path / "b", monkeypatch,
                      resume_from=str(tmp_path / "a" / CHECKPOINT_DIR / "step_12"))
    assert steps == [12, 13, 14]
    _, _, steps = run("qlearning", tmp_path / "c", monkeypatch, resume_from="latest")  # nothing yet: from 0
    assert steps == list(range(EPOCHS * STEPS_PER_EPOCH))
    with pytest.raises(ValueError, match="missing: not a complete checkpoint"):  # refused when the config is built
        run("qlearning", tmp_path / "d", resume_from=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="output_dir"):
        train(build_model("qlearning"), *loaders(), TrainConfig(epochs=1, cpu=True, progress=False, checkpoint=True))


@pytest.mark.parametrize("damaged", ["model", "loop_state", "loop_rng"])
def test_a_truncated_checkpoint_is_a_clear_error_naming_it(tmp_path, damaged):
    run("qlearning", tmp_path / "a", checkpoint=True, checkpoint_every=0, keep_checkpoints=1)
    ckpt = tmp_path / "a" / CHECKPOINT_DIR / "step_15"
    target = {"model": next(p for p in ckpt.iterdir() if p.name.startswith(("model", "pytorch_model"))),
              "loop_state": ckpt / "loop_state.json", "loop_rng": ckpt / "loop_rng_0.pt"}[damaged]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"step_15.*(truncated|damaged)") as err:
        run("qlearning", tmp_path / "b", resume_from=str(ckpt))
    assert err.value.__cause__ is None


# --- NaN / inf guards -------------------------------------------------------------------------


def _step_setup(learner="qlearning", **cfg_kw):
    model = build_model(learner)
    cfg = TrainConfig(cpu=True, progress=False, lr=0.2, **cfg_kw)
    block_opt, router_opt = make_optimizers(model, cfg)
    return model, cfg, block_opt, router_opt


def test_nan_reward_raises_naming_the_learner_and_step_before_any_update(tmp_path, monkeypatch):
    model = build_model("qlearning")
    train_loader, evals = loaders()
    snapshots = {}

    def step(model_, batch_, block_opt, router_opt, cfg, accelerator=None, step=0):
        snapshots[step] = copy.deepcopy(model_.state_dict())
        return train_step(model_, batch_, block_opt, router_opt, cfg, accelerator, step)

    real_reward = routed_base.final_reward
    calls = []

    def nan_reward(*args, **kwargs):  # NaN rewards from the 7th training batch on
        calls.append(1)
        r = real_reward(*args, **kwargs)
        return r * float("nan") if len(calls) == 7 else r

    monkeypatch.setattr(routed_base, "final_reward", nan_reward)
    monkeypatch.setattr(loop, "train_step", step)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, cpu=True, progress=False, select_best=False)
    with pytest.raises(NonFiniteError) as err:
        train(model, train_loader, {}, cfg)
    message = str(err.value)
    assert "training step 6" in message and "router loss = nan" in message
    assert "router of layer 'wp' (learner 'qlearning')" in message
    assert "router of layer 'classifier' (learner 'qlearning')" in message
    assert "no parameter was updated" in message and "task loss" not in message
    params = dict(model.named_parameters())
    for key, value in snapshots[6].items():  # every table, critic and block as they were before step 6
        if key in params:
            assert torch.equal(params[key], value), key
    # the running action shares (a buffer, folded in while computing the rewards) stay finite
    assert all(torch.isfinite(c.share).all() for c in model.collaboration)


def test_nan_in_a_critic_gradient_names_the_critic_learner():
    model, cfg, block_opt, router_opt = _step_setup("aac")
    critic = model.routers()[1].learner.critic.table
    critic.register_hook(lambda g: g * float("inf"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    expected = r"training step 41 .*router of layer 'classifier' \(learner 'aac'\)"
    with pytest.raises(NonFiniteError, match=expected) as err:
        train_step(model, batch(b=8), block_opt, router_opt, cfg, None, 41)
    assert "critic.table" in str(err.value) and "layer 'wp'" not in str(err.value)
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())
    # switched off: the step goes through (and the NaN reaches the table)
    model.train()
    train_step(model, batch(b=8), block_opt, router_opt, TrainConfig(check_finite=False), None, 42)
    assert not torch.isfinite(critic).all()


def test_nan_task_loss_is_reported():
    model, cfg, block_opt, router_opt = _step_setup()
    model.classifier.out.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    with pytest.raises(NonFiniteError, match="task loss = nan"):
        train_step(model, batch(b=8), block_opt, router_opt, cfg, None, 0)


# --- gradient clipping ------------------------------------------------------------------------


def _grads_after_step(model, **cfg_kw):
    model = copy.deepcopy(model)
    cfg = TrainConfig(cpu=True, progress=False, lr=0.0, **cfg_kw)  # lr 0: the gradients are what we read
    block_opt, router_opt = make_optimizers(model, cfg)
    train_step(model, batch(b=16, seed=3), block_opt, router_opt, cfg, None, 0)
    blocks = [p.grad.clone() for p in numerics.optimizer_params(block_opt) if p.grad is not None]
    routers = [p.grad.clone() for p in numerics.optimizer_params(router_opt) if p.grad is not None]
    return blocks, routers


def _norm(grads):
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


@pytest.mark.parametrize("learner", ["qlearning", "aac"])
def test_block_and_router_clipping_each_clip_only_their_own_group(learner):
    model = build_model(learner)
    blocks, routers = _grads_after_step(model)
    nb, nr = _norm(blocks), _norm(routers)
    assert nb > 1e-3 and nr > 1e-3

    b_clip, r_same = _grads_after_step(model, block_max_grad_norm=nb / 4)
    assert _norm(b_clip) == pytest.approx(nb / 4, rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(r_same, routers))  # routers untouched

    b_same, r_clip = _grads_after_step(model, router_max_grad_norm=nr / 4)
    assert _norm(r_clip) == pytest.approx(nr / 4, rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(b_same, blocks))  # blocks untouched

    # the shortcut clips each group separately to the same norm
    limit = min(nb, nr) / 2
    b2, r2 = _grads_after_step(model, max_grad_norm=limit)
    assert _norm(b2) == pytest.approx(limit, rel=1e-4) and _norm(r2) == pytest.approx(limit, rel=1e-4)
    # a group-specific norm takes precedence over the shortcut
    cfg = TrainConfig(max_grad_norm=1.0, router_max_grad_norm=5.0)
    assert (cfg.block_clip_norm, cfg.router_clip_norm) == (1.0, 5.0)
    with pytest.raises(ValueError, match="block_max_grad_norm"):
        TrainConfig(block_max_grad_norm=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shapes", [[(24, 8)], [(3, 64, 64)], [(5,), (2, 3)]], ids=["table", "bank", "two"])
def test_the_finite_checks_group_norm_is_torchs_total_norm_bit_for_bit(dtype, shapes):
    """The finite check's norm of a group (reused for clipping): one tensor's is computed as one norm, several
    go through get_total_norm; either way the same bits as torch.nn.utils.get_total_norm."""
    g = torch.Generator().manual_seed(0)
    grads = [(torch.randn(s, generator=g) * 3).to(dtype) for s in shapes]
    got, want = numerics._total_norm(grads), torch.nn.utils.get_total_norm(grads)
    assert got.dtype == want.dtype and torch.equal(got, want)
