"""Image multi-task sets (MNIST-MTL & co.), the Base convnet's methods and the image MTL recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Array3D, ClassLabel
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from nli_routing.data.image_mtl import (
    build_cifar_mtl,
    build_fashion_mnist_mtl,
    build_min_mtl,
    build_mnist_mtl,
    load_arrays,
    load_mnist_mtl,
    read_idx,
)
from nli_routing.models.vision import (
    VISION_METHODS,
    ImageMTLCollator,
    TaskRoutingMask,
    VisionMTLConfig,
    VisionMTLModel,
)
from nli_routing.training.loop import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images[:1200], d.target[:1200], d.images[1200:], d.target[1200:]


@pytest.fixture(scope="module")
def tiny_mtl(digits):
    return build_mnist_mtl(*digits, per_class=2, test_per_task=6, seed=0)


def test_mnist_mtl_counts_and_balance(digits):
    dsd = build_mnist_mtl(*digits, per_class=10, test_per_task=20, seed=1)
    feats = dsd["train"].features
    assert isinstance(feats["image"], Array3D) and feats["image"].shape == (1, 8, 8)
    assert isinstance(feats["label"], ClassLabel) and feats["label"].names == ["negative", "positive"]
    assert isinstance(feats["task"], ClassLabel) and feats["task"].num_classes == 10
    for split, per_task in (("train", 100), ("test", 20)):
        ds = dsd[split].with_format("numpy")[:]
        task, label, src = ds["task"], ds["label"], ds["source_label"]
        assert np.bincount(task, minlength=10).tolist() == [per_task] * 10
        assert np.array_equal(label == 1, src == task)  # positive iff the digit is the task's digit
        for k in range(10):
            sel = task == k
            if split == "train":  # 10 positives and 10 of each of the nine other digits
                assert np.bincount(src[sel], minlength=10).tolist() == [10] * 10
            else:  # half positive, negatives spread evenly over the other digits
                assert int(label[sel].sum()) == 10
                neg = np.bincount(src[sel & (label == 0)], minlength=10)
                assert neg[k] == 0 and set(np.delete(neg, k).tolist()) <= {1, 2} and neg.sum() == 10
    img = dsd["train"].with_format("numpy")[0]["image"]
    assert feats["image"].dtype == "uint8" and 16 < img.max() <= 255  # scikit-learn's 0..16 scaled to 0..255


def test_mnist_mtl_is_seeded_and_checks_counts(digits):
    a = build_mnist_mtl(*digits, per_class=3, test_per_task=10, seed=5)["train"]["source_label"]
    b = build_mnist_mtl(*digits, per_class=3, test_per_task=10, seed=5)["train"]["source_label"]
    assert a == b
    with pytest.raises(ValueError, match="only"):
        build_mnist_mtl(*digits, per_class=1000, test_per_task=10)


def test_fashion_cifar_min_builders():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(10), 20)
    fashion = build_fashion_mnist_mtl(x, y, x, y, per_class=2, test_per_task=4)
    assert fashion["train"].features["task"].names[0] == "fashion-t-shirt/top" and len(fashion["train"]) == 200
    # CIFAR-MTL: 100 fine labels, 5 per coarse label (a shuffled mapping)
    fine = np.repeat(np.arange(100), 3)
    coarse_of = rng.permutation(np.repeat(np.arange(20), 5))
    xc = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)  # channels last
    cifar = build_cifar_mtl(xc, fine, coarse_of[fine], xc[:100], fine[:100], coarse_of[fine[:100]])
    tr = cifar["train"].with_format("numpy")[:]
    assert cifar["train"].features["image"].shape == (3, 8, 8)
    assert cifar["train"].features["task"].num_classes == 20 and cifar["train"].features["label"].num_classes == 5
    assert np.array_equal(coarse_of[tr["source_label"]], tr["task"])
    for t in range(20):
        src = tr["source_label"][tr["task"] == t]
        assert len(set(src.tolist())) == 5
        assert np.array_equal(np.searchsorted(np.unique(src), src), tr["label"][tr["task"] == t])
    # MIN-MTL: 10 tasks of 5 labels drawn from 64 classes, per-class train/test split
    ym = np.repeat(np.arange(64), 6)
    xm = rng.integers(0, 256, (len(ym), 3, 8, 8), dtype=np.uint8)
    mini = build_min_mtl(xm, ym, num_tasks=10, classes_per_task=5, seed=0)
    mtr, mte = mini["train"].with_format("numpy")[:], mini["test"].with_format("numpy")[:]
    assert len(set(mtr["source_label"].tolist())) == 50 and len(mtr["task"]) == 250 and len(mte["task"]) == 50
    assert set(mtr["source_label"].tolist()) == set(mte["source_label"].tolist())
    assert np.bincount(mtr["task"]).tolist() == [25] * 10


def test_local_arrays_idx_and_hub_offline(tmp_path, digits, monkeypatch):
    x, y = digits[0][:50].astype(np.uint8), digits[1][:50].astype(np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                      ("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
        (tmp_path / stem).write_bytes(header + arr.tobytes())
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), x)
    arrays = load_arrays(tmp_path)
    assert np.array_equal(arrays["y_test"], y)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=digits[0], y_train=digits[1], x_test=digits[2], y_test=digits[3],
             x_val=digits[2], y_val=digits[3])
    dsd = load_mnist_mtl(npz, per_class=2, test_per_task=6)
    assert set(dsd) == {"train", "validation", "test"}
    import nli_routing.data.image_mtl as image_mtl

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(image_mtl.datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="'mnist'.*local arrays"):
        load_mnist_mtl(None)


def _loaders(dsd, batch_size=64):
    data, collate = dsd.with_format("numpy"), ImageMTLCollator()
    return (DataLoader(data["train"], batch_size=batch_size, shuffle=True, collate_fn=collate),
            {"test": DataLoader(data["test"], batch_size=128, collate_fn=collate)})


def _small(method: str, **kw) -> VisionMTLModel:
    cfg = VisionMTLConfig(num_meta=10, method=method, image_size=8, conv_channels=8, fc_hidden=16, **kw)
    return VisionMTLModel(cfg)


@pytest.mark.parametrize("method", sorted(VISION_METHODS))
def test_each_method_trains_with_the_shared_loop(method, tiny_mtl):
    torch.manual_seed(0)
    model = _small(method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_loader, evals = _loaders(tiny_mtl)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, cpu=True, progress=False, select_best=False)
    result = train(model, train_loader, evals, cfg, meta_names=tiny_mtl["train"].features["task"].names)
    final = result["final"]["test"]
    assert 0.0 <= final["accuracy"] <= 1.0 and final["n"] == 60 and len(final["accuracy_per_meta"]) == 10
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any(n.startswith(("convs.0", "routed_convs.0")) for n in changed)  # the trunk learned
    assert any(n.startswith("heads.") for n in changed)
    if VISION_METHODS[method][0] == "routed" or method.startswith("routing"):
        assert len(model.routed_layers) == 1 and "routing_entropy_0" in final


def test_task_routing_layer_masks_follow_sigma_and_get_no_gradient():
    for sigma in (0.1, 0.5, 0.75, 1.0):
        trl = TaskRoutingMask(num_tasks=7, channels=32, sigma=sigma, seed=3)
        assert trl.masks.sum(1).tolist() == [round(sigma * 32)] * 7
        assert set(trl.masks.unique().tolist()) <= {0.0, 1.0}
        assert not trl.masks.requires_grad and len(list(trl.parameters())) == 0
    masks = TaskRoutingMask(10, 32, 0.5, seed=0).masks
    assert len({tuple(m.tolist()) for m in masks}) > 1  # tasks get different masks
    # gradients pass through the mask (zero on masked channels), never into it
    trl = TaskRoutingMask(3, 4, 0.5, seed=1)
    x = torch.randn(3, 4, 2, 2, requires_grad=True)
    task = torch.tensor([0, 1, 2])
    trl(x, task).sum().backward()
    assert torch.equal(x.grad, trl.masks[task].view(3, 4, 1, 1).expand_as(x))
    assert trl.masks.grad is None
    # in the model: masks sit after batch norm of every conv layer, buffers only, unchanged by training
    model = _small("task-routing-layer", sigma=0.25)
    names = {n for n, _ in model.named_buffers()}
    assert {f"convs.{i}.trl.masks" for i in range(4)} <= names
    assert not any("trl" in n for n, _ in model.named_parameters())
    before = model.convs[0].trl.masks.clone()
    out = model(torch.rand(8, 1, 8, 8), torch.arange(8), torch.zeros(8, dtype=torch.long))
    out.per_sample_loss.mean().backward()
    assert model.convs[0].conv.weight.grad is not None and model.convs[0].trl.masks.grad is None
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.equal(before, model.convs[0].trl.masks)


def test_cross_stitch_weights_are_learned(tiny_mtl):
    torch.manual_seed(0)
    model = _small("cross-stitch")
    alphas = model.cross_stitch.alphas
    assert len(alphas) == 3 and torch.allclose(alphas[0].diagonal(), torch.full((10,), 0.9))
    assert torch.allclose(alphas[0].sum(1), torch.ones(10))
    router_ids = {id(p) for p in model.router_parameters()}
    assert all(id(a) not in router_ids for a in alphas)  # trained by the task loss (block optimizer)
    before = [a.detach().clone() for a in alphas]
    train_loader, evals = _loaders(tiny_mtl)
    train(model, train_loader, evals, TrainConfig(epochs=1, lr=0.1, cpu=True, progress=False, select_best=False))
    assert all(not torch.equal(b, a.detach()) for b, a in zip(before, alphas))


def test_fixed_routes_task_specific_and_random():
    model = _small("task-specific-all-fc")
    meta = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    out = model(torch.rand(8, 1, 8, 8), meta)
    assert torch.equal(out.trajectories[0].actions, meta.unsqueeze(1).expand(8, 3))
    model = _small("fixed-random-conv3")
    routes = model.conv3.router.routes.clone()
    out = model(torch.rand(8, 1, 8, 8), meta, torch.zeros(8, dtype=torch.long))
    assert torch.equal(out.trajectories[0].actions[:, 0], routes[meta, 0])
    assert model.router_loss(out, torch.zeros(8, dtype=torch.long)).item() == 0.0
    assert model.router_parameters() == []
    with pytest.raises(ValueError, match="method must be one of"):
        VisionMTLConfig(method="nope")


def test_recipe_runs_on_local_arrays(tmp_path, digits, monkeypatch):
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=digits[0], y_train=digits[1], x_test=digits[2], y_test=digits[3])
    from recipes import image_mtl as recipe
    results = recipe.main([
        "--dataset", "mnist-mtl", "--data_path", str(npz), "--per_class", "2", "--test_per_task", "4",
        "--method", "routing", "task-routing-layer", "--sigma", "0.5", "--epochs", "1", "--conv_channels", "8",
        "--fc_hidden", "16", "--cpu", "--progress", "false", "--output_dir", str(tmp_path / "out"),
    ])
    assert set(results) == {"routing", "task-routing-layer"}
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "routing" / "model.safetensors").exists()


def test_unknown_task_ids_fail_clearly():
    model = _small("shared-bottom")
    with pytest.raises(ValueError, match=r"task ids \[10\] are outside"):
        model(torch.rand(2, 1, 8, 8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="needs the task ids"):
        model(torch.rand(2, 1, 8, 8))


def test_fc_only_base_network_sizes_its_first_layer_from_the_input():
    """conv_layers=0: the FC stack reads the flattened image (in_channels x size x size)."""
    import torch

    from nli_routing.models.vision import VisionMTLConfig, VisionMTLModel
    from nli_routing.routing import LinearBank

    cfg = VisionMTLConfig(num_meta=3, method="routing", in_channels=1, image_size=8, conv_layers=0)
    model = VisionMTLModel(cfg)
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, LinearBank)))
    assert isinstance(first, LinearBank) and first.in_dim == 64


def test_no_sharing_gives_each_task_its_own_parameters_in_every_layer():
    """'Re-examining Routing Networks'' no-sharing baseline: a task's loss reaches only its own conv and
    FC blocks (and its head); every other parameter's gradient is zero."""
    torch.manual_seed(0)
    model = _small("no-sharing", conv_layers=2)
    model.train()
    meta = torch.full((6,), 3)
    out = model(torch.rand(6, 1, 8, 8), meta, torch.zeros(6, dtype=torch.long))
    out.loss.backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and len(model.routed_convs) == 2 and model.conv3 is None
    for name in touched:
        assert (".blocks.0.3." in name or "heads" in name or ".3." in name or "routed_fc" in name), name
    # the conv blocks of other tasks: untouched
    for i in ("0", "1"):
        for t, block in enumerate(model.routed_convs[i].blocks[0]):
            grads = [p.grad for p in block.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
            assert bool(grads) == (t == 3), (i, t)
    fc_actions = out.trajectories[-1].actions
    assert torch.equal(fc_actions, meta.unsqueeze(1).expand(6, 3))
    with pytest.raises(ValueError, match="routed_convs does not combine"):
        VisionMTLConfig(method="no-sharing", routed_convs="1")


def test_routed_convs_route_the_listed_conv_layers_and_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = _small("routing", routed_convs="1,3", conv_width=3)
    assert sorted(model.routed_convs) == ["0", "2"]
    assert [name for name, _ in model.named_routed_layers()] == ["conv1", "conv3", "fc"]
    meta = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    out = model(torch.rand(8, 1, 8, 8), meta, torch.zeros(8, dtype=torch.long))
    assert len(out.trajectories) == 3
    assert all(int(t.actions.max()) < 3 for t in out.trajectories[:2])
    router_ids = {id(p) for p in model.router_parameters()}
    assert all(id(p) in router_ids for i in ("0", "2") for p in model.routed_convs[i].router.parameters())
    loss = out.loss + model.router_loss(out, torch.zeros(8, dtype=torch.long))
    loss.backward()
    model.save_pretrained(tmp_path / "m")
    again = VisionMTLModel.from_pretrained(tmp_path / "m")
    model.eval(), again.eval()
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(again(x, meta[:4]).logits, model(x, meta[:4]).logits)
    for bad in ("0", "5", "1,x", "2,2"):
        with pytest.raises(ValueError, match="routed_convs"):
            VisionMTLConfig(routed_convs=bad, conv_layers=4)
    with pytest.raises(ValueError, match="does not read the activation"):
        _small("routing-single-agent", routed_convs="1")


def test_one_task_batches_hold_one_task_each_and_cover_every_sample_once():
    """Strezoski et al.'s Algorithm 1: one task per mini-batch; every sample once per epoch; the order
    follows the seed and the epoch (a resumed epoch gets the same batches)."""
    from nli_routing.experiments.image import OneTaskBatchSampler

    tasks = np.repeat(np.arange(4), [10, 7, 3, 12])
    sampler = OneTaskBatchSampler(tasks, batch_size=4, seed=5)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 + 2 + 1 + 3
    assert all(len(set(tasks[b])) == 1 for b in first)
    assert sorted(i for b in first for i in b) == list(range(len(tasks)))
    second = list(sampler)  # the next epoch: another order
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(OneTaskBatchSampler(tasks, 4, seed=6)) != first


def test_the_recipe_trains_with_one_task_batches(tmp_path, tiny_mtl):
    from nli_routing.experiments.image import run_image_method

    seen = []
    orig = VisionMTLModel.forward

    def spy(self, pixel_values, meta=None, labels=None, **kw):
        if self.training:
            seen.append(meta.unique().numel())
        return orig(self, pixel_values, meta, labels, **kw)

    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, cpu=True, progress=False, select_best=False)
    try:
        VisionMTLModel.forward = spy
        res = run_image_method("task-routing-layer", tiny_mtl, VisionMTLConfig(conv_channels=8, fc_hidden=16), cfg,
                               None, one_task_batches=True)
    finally:
        VisionMTLModel.forward = orig
    counts = np.unique(np.asarray(tiny_mtl["train"]["task"]), return_counts=True)[1]
    assert set(seen) == {1}
    assert len(seen) == sum(-(-int(c) // 8) for c in counts)
    assert 0.0 <= res["final"]["test"]["accuracy"] <= 1.0


def test_the_pass_action_in_the_image_models():
    """routing-recurrent with PASS: the FC router has width + stop + pass actions, and a sample that
    passes at every step leaves the shared first FC layer's output to the heads unchanged."""
    torch.manual_seed(0)
    model = _small("routing-recurrent", allow_pass=True)
    layer = model.routed_fc
    assert layer.allow_pass and layer.num_actions == layer.width + 2 and layer.pass_action == layer.width + 1
    with torch.no_grad():
        layer.router.table.zero_()
        layer.router.table[:, :, layer.pass_action] = 1.0
    model.eval()
    x, meta = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = model(x, meta)
    assert (out.trajectories[0].actions == layer.pass_action).all()
    h = x
    for conv in model.convs:
        h = conv(h, meta)
    torch.testing.assert_close(out.logits, model.heads(model.shared_fc(h.flatten(1)), meta))
    with pytest.raises(ValueError, match="every step must keep its size"):
        _small("routing", allow_pass=True)  # routing-all-fc's first step changes the size
    with pytest.raises(ValueError, match="routes none"):
        VisionMTLConfig(method="shared-bottom", allow_pass=True)
