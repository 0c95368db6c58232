"""Routed LSTM sentence encoder (thesis 5.3.1.2, eq. 5.1) and the NLI model built on it.

An LSTM cell computes its four gate pre-activations (PyTorch order input, forget, cell, output) as

    z_t = W(x_t) + U(h_{t-1}),   i, f, g, o = split(z_t),
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t).

Routing replaces one of the two transforms by a composition of routed function blocks, chosen once
per sample (a *path* ``a_1 .. a_d``, one decision per routing step; the path is the same at every
time step and for both sentences of a sample):

* ``routed="i2h"``: ``W = G_{a_d} o P_{a_{d-1}} o ... o P_{a_1}``;
* ``routed="h2h"``: ``U = G_{a_d} o P_{a_{d-1}} o ... o P_{a_1}``;

``G_k`` is one ``Linear(in, 4 * hidden)`` (the transform of all four gates at once, the routed
``W_a`` / ``U_a`` of eq. 5.1) and ``P_k`` a projection ``Linear(in, in) + activation`` that keeps
the size; every step has its own ``width`` blocks. Depth 1 is exactly eq. 5.1 with routed weight
matrices. ``routed="none"`` is the plain LSTM (equal to ``torch.nn.LSTM`` with the same weights).

Execution: I2H does not depend on ``h``, so the routed transform of all time steps is computed
before the recurrence by one :class:`~nli_routing.routing.RoutedLayer` call on ``[B, T, D]``
(grouped execution: each block runs once on its samples), which makes routed I2H as cheap as
unrouted. H2H must run at every time step: the batch is sorted by path once, and at each step
every path's composition runs on its contiguous slice of the hidden state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..routing import RoutedLayer, Router, Trajectory, build_router
from ..routing.config import check_at_least
from ..routing.decision import RoutingPass
from ..routing.execution import EXECUTIONS
from .blocks import ACTIVATIONS
from .base import register_model_kind
from .nli import NLIModelConfig, NLIRoutingConfig, NLIRoutingModel

LSTM_ROUTES = ("none", "i2h", "h2h")
PATHS = EXECUTIONS["path"]
LSTM_POOLS = ("last", "mean", "max")


def gate_linear(in_dim: int, hidden: int) -> nn.Linear:
    """``Linear(in_dim, 4 * hidden)`` initialised like ``torch.nn.LSTM`` (uniform +-1/sqrt(hidden))."""
    lin = nn.Linear(in_dim, 4 * hidden)
    bound = 1.0 / math.sqrt(hidden)
    nn.init.uniform_(lin.weight, -bound, bound)
    nn.init.uniform_(lin.bias, -bound, bound)
    return lin


def routed_transform_blocks(
    in_dim: int, hidden: int, width: int, depth: int, activation: str = "tanh"
) -> list[list[nn.Module]]:
    """Per-step block lists: ``depth - 1`` projection steps ``P``, then the gate step ``G``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    steps: list[list[nn.Module]] = [
        [nn.Sequential(nn.Linear(in_dim, in_dim), ACTIVATIONS[activation]()) for _ in range(width)]
        for _ in range(depth - 1)
    ]
    steps.append([gate_linear(in_dim, hidden) for _ in range(width)])
    return steps


def lstm_gates(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update from pre-activations ``z [N, 4H]`` and the cell ``c [N, H]`` -> ``(h, c)``."""
    i, f, g, o = z.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _pad_time(x: Tensor, steps: int) -> Tensor:
    """Right-pad dim 1 of ``x [N, T, ...]`` with zeros (False) to ``steps``."""
    if x.shape[1] == steps:
        return x
    pad = x.new_zeros(x.shape[0], steps - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], 1)


class RoutedLSTMEncoder(nn.Module):
    """LSTM sentence encoder whose I2H or H2H transform is routed per sample (see module docstring).

    ``forward(premise_ids, premise_mask, hypothesis_ids, hypothesis_mask, meta)`` returns
    ``(p_enc [B, H], h_enc [B, H], trajectories)`` like :class:`~nli_routing.models.cbow.CBOWEncoder`.
    Masks are right-padded bool ``[B, T]``; an empty sentence encodes to zeros. ``pool``: ``"last"``
    (hidden state after the last real token), ``"mean"`` or ``"max"`` over the real tokens.
    ``router_kwargs`` go to :func:`~nli_routing.routing.build_router` (router type, learner,
    exploration, seed, ...). H2H routers that read the activation see the masked mean of the
    sample's input word vectors (both sentences) at every step, since the path is chosen before
    the recurrence.
    """

    def __init__(
        self,
        weight: Tensor,
        pad_id: int,
        hidden: int = 128,
        routed: str = "none",
        width: int = 4,
        depth: int = 1,
        num_meta: int = 1,
        activation: str = "tanh",
        pool: str = "last",
        freeze: bool = True,
        meta_keyword: int = 0,
        router_kwargs: dict | None = None,
        keyword_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.keyword_tokens = bool(keyword_tokens and meta_keyword)
        if routed not in LSTM_ROUTES:
            raise ValueError(f"routed must be one of {LSTM_ROUTES}, got {routed!r}")
        if pool not in LSTM_POOLS:
            raise ValueError(f"pool must be one of {LSTM_POOLS}, got {pool!r}")
        if routed != "none" and (width < 1 or depth < 1):
            raise ValueError(f"a routed LSTM needs width >= 1 and depth >= 1, got {width}, {depth}")
        kwargs = {"router_type": "tabular", **(router_kwargs or {})}
        if kwargs.get("router_type") == "soft":
            raise ValueError("the soft mixture is not a router: choose a routed router type for the LSTM")
        self.embedding = nn.Embedding.from_pretrained(weight.float(), freeze=freeze, padding_idx=pad_id)
        self.in_dim = dim = int(weight.shape[1])
        self.hidden = hidden
        self.routed_kind = routed
        self.pool = pool
        self.depth = depth
        self.i2h: nn.Module | None = None
        self.h2h: nn.Module | None = None
        self.routed: RoutedLayer | None = None
        if routed == "i2h":
            router = build_router(dims=[dim] * depth + [4 * hidden], width=width, num_meta=num_meta, **kwargs)
            blocks = routed_transform_blocks(dim, hidden, width, depth, activation)
            self.routed = RoutedLayer(blocks, router, depth=depth, recursive=False)
        else:
            self.i2h = gate_linear(dim, hidden)
        if routed == "h2h":
            router = build_router(dims=[dim] * (depth + 1), width=width, num_meta=num_meta, **kwargs)
            blocks = routed_transform_blocks(hidden, hidden, width, depth, activation)
            self.routed = RoutedLayer(blocks, router, depth=depth, recursive=False)
        else:
            self.h2h = gate_linear(hidden, hidden)
        # a vector added to the premise encoding [hidden], or a token in front of each sentence [input dim]
        self.keyword = nn.Embedding(meta_keyword, dim if self.keyword_tokens else hidden) if meta_keyword else None
        if self.keyword_tokens:
            nn.init.normal_(self.keyword.weight, std=float(weight.std()))

    @property
    def router(self) -> Router | None:
        return None if self.routed is None else self.routed.router

    # ------------------------------------------------------------------ routing decisions
    def decide_h2h(self, x: Tensor, mask: Tensor, meta: Tensor | None) -> tuple[Tensor, Tensor | None, Trajectory]:
        """H2H path ``[B, d]`` of every sample, the relaxed scale ``[B]`` (or None) and the trajectory.

        The path is chosen before the recurrence, every step from the same state (the masked mean
        of the sample's word vectors for routers that read it)."""
        rp = RoutingPass(self.routed.router, meta)
        decisions, scale = [], None
        for t in range(self.depth):
            dec = rp.decide(t, x, mask)
            decisions.append(dec.actions)
            w = rp.scale(dec)
            if w is not None:
                scale = w if scale is None else scale * w
        return torch.stack(decisions, 1), scale, rp.trajectory(self.depth)

    # ------------------------------------------------------------------ recurrence
    def recur(
        self, gx: Tensor, mask: Tensor, paths: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        """Run the recurrence over ``gx [N, T, 4H]`` (I2H pre-activations) -> ``[N, H]`` encodings.

        ``paths [N, d]`` (routed H2H only): the batch is sorted by path once (the ``"path"``
        execution of :mod:`nli_routing.routing.execution`); at every time step each path's
        composition runs on its contiguous slice. ``scale [N]`` multiplies the routed H2H output
        (straight-through weights of relaxed routers).
        """
        n, steps = gx.shape[0], gx.shape[1]
        plan = None
        if paths is not None:
            blocks = self.routed.blocks
            plan = PATHS.plan(blocks, paths)
            gx, mask = plan.gather(gx), plan.gather(mask)
            scale = None if scale is None else plan.gather(scale)
            single = plan.single

        def hidden_transform(h: Tensor) -> Tensor:
            if plan is None:
                return self.h2h(h)
            if single is not None:
                return PATHS.run_one(blocks, single, h, scale)
            return PATHS.run_sorted(blocks, h, plan.sorted_groups, scale, counts=plan.counts)

        h = gx.new_zeros(n, self.hidden)
        c = gx.new_zeros(n, self.hidden)
        pooled = None
        if self.pool == "mean":
            pooled = gx.new_zeros(n, self.hidden)
        elif self.pool == "max":
            pooled = gx.new_full((n, self.hidden), -math.inf)
        for t in range(steps):
            h_new, c_new = lstm_gates(gx[:, t] + hidden_transform(h), c)
            m = mask[:, t].unsqueeze(1)
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            if self.pool == "mean":
                pooled = pooled + h_new * m
            elif self.pool == "max":
                pooled = torch.where(m, torch.maximum(pooled, h_new), pooled)
        if self.pool == "last":
            out = h
        elif self.pool == "mean":
            out = pooled / mask.sum(1, keepdim=True).clamp_min(1).to(pooled.dtype)
        else:
            out = torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
        return out if plan is None else plan.restore(out)

    def forward(
        self,
        premise_ids: Tensor,
        premise_mask: Tensor,
        hypothesis_ids: Tensor,
        hypothesis_mask: Tensor,
        meta: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Trajectory]]:
        """Encode a premise/hypothesis batch; both sentences of a sample share the sample's path."""
        b, tp, th = premise_ids.shape[0], premise_ids.shape[1], hypothesis_ids.shape[1]
        pm, hm = premise_mask.bool(), hypothesis_mask.bool()
        if self.keyword_tokens:  # the thesis' keyword baseline: a keyword token in front of each sentence
            if meta is None:
                raise ValueError("this encoder adds a meta keyword and needs meta labels")
            keyword = self.keyword(meta).unsqueeze(1)
            xp = torch.cat([keyword, self.embedding(premise_ids)], 1)
            xh = torch.cat([keyword, self.embedding(hypothesis_ids)], 1)
            first = pm.new_ones(b, 1)
            pm, hm, tp, th = torch.cat([first, pm], 1), torch.cat([first, hm], 1), tp + 1, th + 1
            x = torch.cat([xp, xh], 1)
        else:
            x = self.embedding(torch.cat([premise_ids, hypothesis_ids], 1))  # [B, Tp + Th, D]
        mask = torch.cat([pm, hm], 1)
        trajectories: list[Trajectory] = []
        if self.routed_kind == "i2h":
            gx, traj = self.routed(x, meta, mask=mask)  # routed I2H of every time step at once
            trajectories.append(traj)
        else:
            gx = self.i2h(x)
        steps = max(tp, th)
        gp, gh = gx.split([tp, th], 1)
        seqs = torch.cat([_pad_time(gp, steps), _pad_time(gh, steps)])  # [2B, T, 4H]: premises, hypotheses
        masks = torch.cat([_pad_time(pm, steps), _pad_time(hm, steps)])
        paths = scale = None
        if self.routed_kind == "h2h":
            paths, scale, traj = self.decide_h2h(x, mask, meta)
            trajectories.append(traj)
            paths = paths.repeat(2, 1)
            scale = None if scale is None else scale.repeat(2)
        enc = self.recur(seqs, masks, paths, scale)
        p_enc, h_enc = enc[:b], enc[b:]
        if self.keyword is not None and not self.keyword_tokens:
            if meta is None:
                raise ValueError("this encoder adds a meta keyword and needs meta labels")
            p_enc = p_enc + self.keyword(meta)
        return p_enc, h_enc, trajectories


@dataclass
class LSTMModelConfig(NLIModelConfig):
    """Configuration of :class:`LSTMNLIModel`: the NLI model fields plus the LSTM's.

    ``route`` routes the classifier (``"none"`` or ``"classifier"``); ``lstm_route`` the LSTM.
    The word-projection fields (``wp_*``) are unused.
    """

    route: str = field(default="none", metadata={"help": "classifier routing: none or classifier"})
    lstm_route: str = field(default="i2h", metadata={"help": f"routed LSTM transform: one of {LSTM_ROUTES}"})
    lstm_hidden: int = field(default=128, metadata={"help": "LSTM hidden size"})
    lstm_width: int = field(default=4, metadata={"help": "blocks per routing step b"})
    lstm_depth: int = field(default=1, metadata={"help": "routing depth d (composition of d chosen blocks)"})
    lstm_activation: str = field(default="tanh", metadata={"help": "activation of the d-1 projection steps"})
    lstm_pool: str = field(default="last", metadata={"help": f"sentence encoding: one of {LSTM_POOLS}"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, lstm_hidden=1, lstm_width=1, lstm_depth=1)
        if self.route not in ("none", "classifier"):
            raise ValueError(f"LSTM models route 'none' or 'classifier' (no word projection), got {self.route!r}")
        if self.lstm_route not in LSTM_ROUTES:
            raise ValueError(f"lstm_route must be one of {LSTM_ROUTES}, got {self.lstm_route!r}")
        if self.lstm_pool not in LSTM_POOLS:
            raise ValueError(f"lstm_pool must be one of {LSTM_POOLS}, got {self.lstm_pool!r}")


class LSTMNLIModel(NLIRoutingModel):
    """:class:`NLIRoutingModel` with a (routed) LSTM encoder instead of CBOW.

    Inherits the forward (pair features, normalise, classify) and the routing plumbing; only the
    encoder is built here (:meth:`build_encoder`).
    """


    def build_encoder(self, weight: Tensor, pad_id: int) -> tuple[nn.Module, int, list[tuple[str, nn.Module]]]:
        """The (routed) LSTM encoder, its output size and its routed layer (``lstm-<route>``)."""
        c = self.config
        encoder = RoutedLSTMEncoder(
            weight,
            pad_id,
            hidden=c.lstm_hidden,
            routed=c.lstm_route,
            width=c.lstm_width,
            depth=c.lstm_depth,
            num_meta=c.num_meta,
            activation=c.lstm_activation,
            pool=c.lstm_pool,
            freeze=c.freeze_embeddings,
            meta_keyword=c.num_meta if c.meta_keyword else 0,
            router_kwargs=c.router_kwargs(),
            keyword_tokens=bool(c.meta_keyword) and c.meta_keyword_mode == "tokens",
        )
        routed = [(f"lstm-{c.lstm_route}", encoder.routed)] if encoder.routed is not None else []
        return encoder, c.lstm_hidden, routed


LSTMNLIConfig = register_model_kind("lstm", LSTMModelConfig, LSTMNLIModel, "nli-routing-lstm", "LSTMNLIConfig",
                                    parent=NLIRoutingConfig)
