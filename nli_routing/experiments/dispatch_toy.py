"""The dispatch toy of issue 29: latent groups with conflicting label rules, readable from the tokens.

Used by the tests (``tests/test_dispatch_toy.py``, ``tests/test_routing_toy.py``) and by
``benchmarks/dispatch_toy.py``.

Each sample belongs to one of ``GROUPS`` hidden groups. Its premise holds ``STYLE`` style words of its
group (each group has its own ``STYLE_VOCAB`` style words) and one content word; the hypothesis holds
filler words shared by all groups. The label is ``(base[content] + group) % 3``: every group gives
every content word a different label, so one path through the model cannot serve two groups, and the
group is readable from the premise's words but never given to a dispatcher.

Layouts (``layout``): ``"premise"`` as above. A dispatcher reading that premise sees the content word
too, so it can compute the label itself, and a dispatch by the label with one constant path per class
solves the toy as well as the groups do (NMI with the groups 0): the groups are not the only answer.
``"split"``: the content word moves to the hypothesis and a filler word takes its place, so the
premise (what the online dispatchers read) carries the group and nothing else, and the only dispatch
that helps is by the group (issue 29).

Models (all :class:`~nli_routing.models.nli.NLIRoutingModel`, CBOW over frozen random word vectors,
``DIM`` wide, a one-hidden-layer classifier):

* ``"oracle"``: the word projection routed on the hidden group (meta given);
* ``"unrouted"``: the same projection unrouted (one shared block, ``route="projection"``);
* ``"keyword"``: the unrouted model that sees the group as an input (a learned keyword vector added
  to the premise encoding, ``meta_keyword=True``: the keyword baseline);
* a dispatcher kind (``"basic"``, ``"rbae-*"``): the projection routed on a learned dispatcher's
  classes, trained online with the model;
* ``"two-stage"``: the oracle model trained, then frozen, then a two-stage dispatcher trained on it.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from nli_routing.models.dispatcher import LearnedDispatcher, compact_vocabulary
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel

GROUPS, STYLE, STYLE_VOCAB, CONTENT, FILLER, DIM = 3, 3, 6, 12, 6, 16
STYLE_START = 1
CONTENT_START = STYLE_START + GROUPS * STYLE_VOCAB
FILLER_START = CONTENT_START + CONTENT
VOCAB = FILLER_START + FILLER
BATCH = 64
LAYOUTS = ("premise", "split")


def word_vectors(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(VOCAB, DIM, generator=g)
    w[0] = 0.0
    return w


def make_batch(n: int, seed: int, layout: str = "premise") -> dict[str, torch.Tensor]:
    """``n`` samples: premise (style words of the group + a content word; ``layout="split"``: + a filler
    word, the content word goes to the hypothesis), hypothesis, label, group."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, GROUPS, (n,), generator=g)
    content = torch.randint(0, CONTENT, (n,), generator=g)
    style = STYLE_START + group.unsqueeze(1) * STYLE_VOCAB + torch.randint(0, STYLE_VOCAB, (n, STYLE), generator=g)
    if layout == "split":  # a filler word in the content word's place
        last = FILLER_START + torch.randint(0, FILLER, (n,), generator=g)
    else:
        last = CONTENT_START + content
    premise = torch.cat([style, last.unsqueeze(1)], 1)
    premise = premise.gather(1, torch.rand(n, STYLE + 1, generator=g).argsort(1))  # word order carries nothing
    hypothesis = FILLER_START + torch.randint(0, FILLER, (n, 2), generator=g)
    if layout == "split":
        hypothesis = torch.cat([hypothesis, (CONTENT_START + content).unsqueeze(1)], 1)
    base = torch.arange(CONTENT) % 3
    label = (base[content] + group) % 3
    ones_p = torch.ones_like(premise, dtype=torch.bool)
    ones_h = torch.ones_like(hypothesis, dtype=torch.bool)
    return {"premise_ids": premise, "premise_mask": ones_p, "hypothesis_ids": hypothesis,
            "hypothesis_mask": ones_h, "labels": label, "meta": group}


def build(kind: str, seed: int = 0, router: dict | None = None, **dispatch_kwargs) -> NLIRoutingModel:
    """A toy model of ``kind`` (see the module docstring); ``router``: router settings of the model
    config (default: the NLI models' defaults); ``dispatch_kwargs`` go to the dispatcher."""
    torch.manual_seed(seed)
    route = "projection" if kind in ("unrouted", "keyword") else "wp"
    cfg = NLIModelConfig(route=route, num_meta=GROUPS, wp_width=GROUPS, classifier_layers=0, pair_features="concat",
                         meta_keyword=kind == "keyword", router_seed=seed, **(router or {}))
    model = NLIRoutingModel(cfg, word_vectors(seed), pad_id=0)
    if kind not in ("oracle", "unrouted", "keyword", "two-stage"):
        model.attach_dispatcher(make_dispatcher(model, kind, seed, **dispatch_kwargs))
    return model


def recipe_settings(kind: str, **overrides) -> dict:
    """The dispatcher training the recipes give ``kind`` by default (``DispatchArgs(**overrides).resolved``),
    as :class:`LearnedDispatcher` keyword arguments; the toy keeps its own sizes."""
    from nli_routing.experiments.nli import DispatchArgs

    args = DispatchArgs(**overrides)
    s = args.resolved(kind)
    return {"balance": s["balance"], "balance_term": s["balance_term"], "target": s["target"], "state_norm": s["state_norm"],
            "detach_state": not s["agent_to_encoder"], "agent_optimizer": args.dispatch_agent_optimizer,
            "pair": s["input"] == "pair", "cbow_pool": args.dispatch_cbow_pool,
            "recon_reward": args.dispatch_recon_reward}


def make_dispatcher(model: NLIRoutingModel, kind: str, seed: int, **kwargs) -> LearnedDispatcher:
    vocab_map = compact_vocabulary([list(range(1, VOCAB))], VOCAB)
    opts = dict(hidden=32, projection=32, bottleneck=8, vocab_map=vocab_map, seed=seed + 7)
    opts.update(kwargs)
    return LearnedDispatcher(kind, model.encoder.embedding, GROUPS, **opts)


def train(model: NLIRoutingModel, steps: int, seed: int = 0, lr: float = 2e-3, router_lr: float = 1e-2,
          layout: str = "premise") -> None:
    """Adam on the blocks (and the dispatcher's encoder), SGD on the routers and the dispatcher's agent."""
    router_ids = {id(p) for p in model.router_parameters()}
    blocks = [p for p in model.parameters() if p.requires_grad and id(p) not in router_ids]
    routers = [p for p in model.router_parameters() if p.requires_grad]
    block_opt = torch.optim.Adam(blocks, lr=lr) if blocks else None
    router_opt = torch.optim.SGD(routers, lr=router_lr) if routers else None
    model.train()
    for step in range(steps):
        batch = make_batch(BATCH, seed=10_000 * (seed + 1) + step, layout=layout)
        feed = dict(batch)
        if model.dispatcher is not None and not model.routing_frozen:
            feed.pop("meta")  # an online dispatcher never sees the group (stage 2 of two-stage trains on it)
        out = model(**feed)
        loss = out.per_sample_loss.mean() if not model.routing_frozen else out.logits.new_zeros(())
        total = loss + model.router_loss(out, batch["labels"])
        for opt in (block_opt, router_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in (block_opt, router_opt):
            if opt is not None:
                opt.step()


@torch.no_grad()
def evaluate(model: NLIRoutingModel, n: int = 2000, layout: str = "premise") -> dict[str, float]:
    """Greedy accuracy on held-out samples; with a dispatcher, the NMI of its classes with the groups
    (and with the labels) and its dispatch entropy (bits)."""
    model.eval()
    batch = make_batch(n, seed=999_999, layout=layout)
    feed = dict(batch)
    if model.dispatcher is not None:
        feed.pop("meta")
    out = model(**feed)
    model.train()
    res = {"accuracy": float((out.logits.argmax(-1) == batch["labels"]).float().mean())}
    if out.dispatch is not None:
        d = out.dispatch.meta.numpy()
        res["nmi"] = float(normalized_mutual_info_score(batch["meta"].numpy(), d))
        # a dispatch by the label itself also solves the premise layout (module docstring)
        res["nmi_label"] = float(normalized_mutual_info_score(batch["labels"].numpy(), d))
        p = np.bincount(d, minlength=GROUPS) / len(d)
        res["entropy_bits"] = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return res


@torch.no_grad()
def greedy_paths(model: NLIRoutingModel) -> list[tuple[int, ...]]:
    """Each group's greedy word-projection path (the routers in eval mode)."""
    model.eval()
    meta = torch.arange(GROUPS)
    out = model(**{**make_batch(GROUPS, seed=5), "meta": meta})
    model.train()
    return [tuple(int(a) for a in row) for row in out.trajectories[0].actions]


def run(kind: str, seed: int = 0, steps: int = 600, stage2_steps: int = 300, router: dict | None = None,
        layout: str = "premise", **dispatch_kwargs) -> dict[str, float]:
    """Train a toy model of ``kind`` on ``layout``'s samples and evaluate it (two-stage: oracle first,
    then the dispatcher)."""
    model = build(kind, seed, router, **dispatch_kwargs)
    train(model, steps, seed, layout=layout)
    if kind == "two-stage":
        model.attach_dispatcher(make_dispatcher(model, "two-stage", seed, **dispatch_kwargs))
        model.freeze_routing()
        train(model, stage2_steps, seed + 50, layout=layout)
    res = evaluate(model, layout=layout)
    if kind == "oracle":
        res["distinct_paths"] = len(set(greedy_paths(model)))
    return res
