"""Routing injected into pretrained Transformers: equality with the original, per-sample grouped
execution, save/load, decoder (GPT-2) injection, parameter counts, gradients and the recipe."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
from transformers.utils import logging as hf_logging

from nli_routing.models.transformer import (
    PairCollator,
    RoutedModule,
    RoutedTransformerConfig,
    RoutedTransformerForNLI,
    TransformerNLIConfig,
    count_parameters,
    encode_pairs,
    get_controller,
    inject_routing,
    routed_modules,
    routing_context,
)
from nli_routing.training.loop import TrainConfig, train

from .conftest import REPO_ROOT

hf_logging.set_verbosity_error()  # tiny GPT-2 configs warn about bos/eos ids outside the vocabulary
NUM_META = 4


def tiny(arch: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=99, attn_implementation=attn)
        return BertModel(cfg).eval()
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, attn_implementation=attn)
    return GPT2Model(cfg).eval()


def inputs(arch: str, b: int = 6, t: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
    out = {"input_ids": torch.randint(1, 99, (b, t), generator=g) * mask, "attention_mask": mask}
    if arch == "bert":
        out["token_type_ids"] = (torch.arange(t) >= lengths.unsqueeze(1) // 2).long() * mask
    return out


def routed(arch: str, route: str, b: int, noise: float, attn: str = "sdpa", **kw):
    base = tiny(arch, attn)
    model = copy.deepcopy(base)
    cfg = RoutedTransformerConfig(route=route, num_blocks=b, noise_std=noise, num_meta=NUM_META, **kw)
    inject_routing(model, cfg)
    with torch.no_grad():
        get_controller(model).router.table.normal_()  # no ties: the greedy copy depends on the meta label
    return base, model.eval()


META = torch.tensor([0, 1, 2, 3, 1, 2])
CASES = [(a, r) for a in ("bert", "gpt2") for r in ("attention", "block")]


@pytest.mark.parametrize("arch,route", CASES)
def test_single_copy_without_noise_equals_the_original(arch, route):
    base, model = routed(arch, route, b=1, noise=0.0)
    x = inputs(arch)
    ref = base(**x, output_hidden_states=True)
    out = model(**x, meta=META, output_hidden_states=True)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    assert all(torch.equal(a, r) for a, r in zip(out.hidden_states, ref.hidden_states))
    traj = get_controller(model).last_trajectory
    assert traj.actions.shape == (6, 2) and bool((traj.actions == 0).all())
    with routing_context(model, META):  # the same through the context manager (no meta keyword)
        assert torch.equal(model(**x).last_hidden_state, ref.last_hidden_state)


@pytest.mark.parametrize("arch,route", CASES)
def test_identical_copies_in_a_mixed_batch_equal_the_original(arch, route):
    """b=3 noise-free copies, samples spread over them: outputs, every hidden state and every
    attention map (tuples recorded inside the copies) are reassembled in batch order."""
    base, model = routed(arch, route, b=3, noise=0.0, attn="eager")
    x = inputs(arch)
    ref = base(**x, output_hidden_states=True, output_attentions=True)
    out = model(**x, meta=META, output_hidden_states=True, output_attentions=True)
    actions = get_controller(model).last_trajectory.actions
    assert all(len(set(actions[:, p].tolist())) > 1 for p in range(2)), "every position should split the batch"
    for got, want in [([out.last_hidden_state], [ref.last_hidden_state]), (out.hidden_states, ref.hidden_states),
                      (out.attentions, ref.attentions)]:
        assert len(got) == len(want)
        for a, r in zip(got, want):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,route", CASES)
def test_mixed_batch_equals_each_sample_alone(arch, route):
    """Noisy (distinct) copies: the padded batch equals every sample run alone, unpadded, with its meta."""
    base, model = routed(arch, route, b=3, noise=0.05)
    x = inputs(arch)
    out = model(**x, meta=META).last_hidden_state
    actions = get_controller(model).last_trajectory.actions
    assert len({tuple(a) for a in actions.tolist()}) > 1
    assert (out - base(**x).last_hidden_state).abs().max() > 1e-3, "the copies should differ from the original"
    lengths = x["attention_mask"].sum(1)
    for i in range(6):
        n = int(lengths[i])
        alone = {k: v[i : i + 1, :n] for k, v in x.items()}
        y = model(**alone, meta=META[i : i + 1]).last_hidden_state
        assert torch.equal(get_controller(model).last_trajectory.actions[0], actions[i])
        torch.testing.assert_close(y[0], out[i, :n], rtol=1e-5, atol=1e-5)


def test_only_routed_positions_are_copied():
    base, model = routed("bert", "attention", b=3, noise=3e-4)
    n_base = sum(p.numel() for p in base.parameters())
    attention = sum(p.numel() for p in base.encoder.layer[0].attention.parameters())
    counts = count_parameters(model)
    assert counts["router"] == NUM_META * 2 * 3  # one table [num_meta, positions, b]
    assert counts["copies"] == 2 * 2 * attention  # 2 added copies at each of 2 layers
    assert counts["routed"] == 3 * 2 * attention
    assert counts["base"] == n_base and counts["total"] == n_base + counts["copies"] + counts["router"]
    layer = model.encoder.layer[0]
    assert isinstance(layer.attention, RoutedModule) and not isinstance(layer.intermediate, RoutedModule)
    assert [m.target_name for m in routed_modules(model)] == ["encoder.layer.0.attention", "encoder.layer.1.attention"]
    # copy 0 keeps the pretrained weights; the others carry small noise
    w0, w1 = (layer.attention.copies[k].self.query.weight for k in (0, 1))
    assert torch.equal(w0, base.encoder.layer[0].attention.self.query.weight)
    assert 0 < (w1 - w0).std() < 1e-3
    assert layer.attention.is_cross_attention is False  # attributes read through from copy 0


def test_gpt2_injection_by_target_names_and_kv_cache():
    base, model = routed("gpt2", "attention", b=2, noise=0.05, target_modules=[r"h\.1\.attn"])
    assert [m.target_name for m in routed_modules(model)] == ["h.1.attn"]
    assert get_controller(model).router.table.shape == (NUM_META, 1, 2)
    x = inputs("gpt2")
    with torch.no_grad():
        get_controller(model).router.table.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]] * 2))
    out = model(**x, meta=META)  # use_cache defaults to False under routing
    assert out.last_hidden_state.shape == (6, 7, 32)
    assert get_controller(model).last_trajectory.actions[:, 0].tolist() == [0, 1, 0, 1, 1, 0]
    with pytest.raises(NotImplementedError, match="KV cache"):
        model(**x, meta=META, use_cache=True)
    one = model(**{k: v[:1] for k, v in x.items()}, meta=META[:1], use_cache=True)  # one copy: cache works
    assert one.past_key_values is not None


def test_meta_errors():
    _, model = routed("bert", "attention", b=2, noise=0.0)
    x = inputs("bert")
    with pytest.raises(ValueError, match="needs meta labels"):
        model(**x)
    with pytest.raises(ValueError, match=r"meta labels \[7\] are outside"):
        model(**x, meta=torch.tensor([0, 1, 2, 3, 7, 0]))
    with pytest.raises(ValueError, match="default target modules"):
        inject_routing(torch.nn.Linear(2, 2), RoutedTransformerConfig())


def nli_model(route: str, arch: str = "bert", **kw) -> RoutedTransformerForNLI:
    cfg = TransformerNLIConfig(route=route, num_blocks=2, noise_std=0.01, num_meta=NUM_META, classifier_hidden=16,
                               exploration="high", router_init=0.0, dropout=0.0, **kw)
    return RoutedTransformerForNLI(cfg, backbone=tiny(arch))


def nli_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {**inputs("bert", seed=seed), "meta": META, "labels": torch.randint(0, 3, (6,), generator=g)}


@pytest.mark.parametrize("route", ["attention", "classifier"])
def test_save_and_load_round_trip(route, tmp_path):
    model = nli_model(route)
    with torch.no_grad():
        for r in model.routers():
            r.table.normal_()
        model.routers()[0].set_epoch(3)
    model.eval()
    batch = nli_batch()
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "m")
    loaded = RoutedTransformerForNLI.from_pretrained(tmp_path / "m").eval()
    assert loaded.settings == model.settings
    assert loaded.config.encoder_layout == model.config.encoder_layout
    for a, b in zip(model.routers(), loaded.routers()):  # exploration RNGs restored (before any draw)
        assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(loaded(**batch).logits, logits)
    for a, b in zip(model.routers(), loaded.routers()):
        assert torch.equal(a.table, b.table) and b.epoch == 3
    assert count_parameters(loaded) == count_parameters(model)
    assert not list((tmp_path / "m").glob("*.pt"))  # no pickle in the folder


def write_legacy_folder(model, folder):
    """The folder layout of earlier versions: routing_config.json, backbone/config.json,
    model.safetensors with the routers' extra state as JSON structure + tensors."""
    import json

    from safetensors.torch import save_file

    from nli_routing.serialization import split_state

    folder.mkdir(parents=True)
    (folder / "routing_config.json").write_text(json.dumps(model.settings.to_dict()))
    model.backbone.config.save_pretrained(folder / "backbone")
    tensors, extra = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith("_extra_state"):
            router = model.get_submodule(key.rsplit(".", 1)[0])
            extra[key] = {"epoch": router.epoch, "generator": router.generator.get_state()}
        else:
            tensors[key] = value.detach().clone().contiguous()
    structure, extra_tensors = split_state(extra, prefix="__extra__.")
    save_file({**tensors, **extra_tensors}, str(folder / "model.safetensors"))
    (folder / "extra_state.json").write_text(json.dumps(structure))


def test_a_folder_of_the_older_layout_still_loads_and_a_pickled_one_is_refused(tmp_path):
    from nli_routing.serialization import CheckpointError

    model = nli_model("attention").eval()
    model.routers()[0].set_epoch(2)
    write_legacy_folder(model, tmp_path / "old")
    loaded = RoutedTransformerForNLI.from_pretrained(tmp_path / "old")
    batch = nli_batch()
    assert torch.equal(loaded(**batch).logits, model(**batch).logits) and loaded.routers()[0].epoch == 2
    (tmp_path / "old" / "extra_state.json").rename(tmp_path / "old" / "extra_state.pt")
    with pytest.raises(CheckpointError, match="older nli_routing.*save_pretrained it again"):
        RoutedTransformerForNLI.from_pretrained(tmp_path / "old")


@pytest.mark.parametrize("route", ["attention", "block"])
def test_gradients_reach_the_chosen_copies_and_the_router(route):
    model = nli_model(route).train()
    batch = nli_batch()
    out = model(**batch)
    (traj,) = out.trajectories
    loss = out.per_sample_loss.mean() + model.router_loss(out, batch["labels"])
    loss.backward()
    for module in routed_modules(model):
        chosen = set(traj.actions[:, module.position].tolist())
        for k, c in enumerate(module.copies):
            has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in c.parameters())
            assert has_grad == (k in chosen), (module.target_name, k, chosen)
    table = model.routers()[0].table
    assert table.grad is not None and table.grad.abs().sum() > 0
    before = table.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert not torch.equal(before, table)


@pytest.mark.parametrize("router,learner", [("approx", "qlearning"), ("tabular", "gumbel"), ("dispatched", "reinforce")])
def test_other_router_architectures_train(router, learner):
    """State-reading routers see the masked mean hidden state; relaxed ones get the task loss's gradient."""
    model = nli_model("attention", router=router, learner=learner).train()
    batch = nli_batch()
    out = model(**batch)
    (model.router_loss(out, batch["labels"]) + out.per_sample_loss.mean()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.router_parameters())


def test_nli_model_runs_in_the_training_loop():
    model = nli_model("block", arch="gpt2", pooling="last")
    batches = [nli_batch(s) for s in range(3)]
    for b in batches:
        b.pop("token_type_ids")
    loader = DataLoader(batches, batch_size=None)
    cfg = TrainConfig(epochs=1, cpu=True, progress=False, lr=1e-3)
    result = train(model, loader, {"validation": loader}, cfg)
    final = result["final"]["validation"]
    assert 0.0 <= final["accuracy"] <= 1.0 and "routing_entropy_0" in final


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    from nli_routing.models.embeddings import default_model_path

    path = default_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def test_minilm_pairs_collator_and_attention_routing(minilm):
    tokenizer, plain = minilm
    ds = Dataset.from_dict({
        "premise": ["Maria managed to cook dinner", "the farmer never answered the email", ""],
        "hypothesis": ["Maria cooked dinner", "the farmer did not answer", "nothing happened at all"],
        "label": [0, 1, 2],
        "signature": [0, 1, 2],
    })
    enc = encode_pairs(ds, tokenizer, max_length=12)
    assert max(len(r) for r in enc["input_ids"]) <= 12
    batch = PairCollator(tokenizer.pad_token_id)([enc[i] for i in range(3)])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "meta"}
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id and batch["token_type_ids"].max() == 1
    cfg = TransformerNLIConfig(route="attention", num_blocks=2, noise_std=0.0, num_meta=3, exploration="high")
    model = RoutedTransformerForNLI(cfg, backbone=copy.deepcopy(plain)).eval()
    with torch.no_grad():
        model.routers()[0].table.normal_()
        pooled, (traj,) = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                       batch["meta"])
        ref = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (ref * m).sum(1) / m.sum(1), rtol=1e-4, atol=1e-5)
    assert traj.actions.shape == (3, 6)
    counts = count_parameters(model)
    attention = sum(p.numel() for p in plain.encoder.layer[0].attention.parameters())
    assert counts["copies"] == 6 * attention and counts["router"] == 3 * 6 * 2


def test_recipe_runs_end_to_end(tmp_path):
    cmd = [sys.executable, str(REPO_ROOT / "recipes" / "finetune_routed_transformer.py"), "--route", "attention",
           "--max_train_samples", "32", "--max_eval_samples", "32", "--batch_size", "16", "--epochs", "1", "--cpu",
           "--allow_unseen_meta", "--progress", "false", "--output_dir", str(tmp_path)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transformer-attention" in proc.stdout and "copies" in proc.stdout
    assert (tmp_path / "results.json").exists() and (tmp_path / "attention" / "model.safetensors").exists()
