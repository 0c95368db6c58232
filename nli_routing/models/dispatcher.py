"""Learned dispatchers (thesis 5.3.3 and chapter 6): an agent that assigns each sample a meta class.

A dispatcher reads the sample's tokens (never its meta label), encodes them, and picks one of K
*virtual meta classes*; the routed model then routes the sample with the agent of that class, as it
would with a signature or genre. The dispatcher is a one-step RL agent (an
:class:`~nli_routing.routing.ApproxRouter` over the encoding, any registered learner) rewarded by the
model's outcome on the task.

Kinds:

* ``"basic"`` (online dispatching with the routing objective only): an LSTM encodes the sample; the
  dispatch loss is the only signal of the encoder (its gradient flows into the LSTM).
* ``"rbae-cbow" | "rbae-attn" | "rbae-onehot" | "rbae-seq"``: the routed bottleneck autoencoder
  (Figure 6.3). Encode (CBOW, attention-weighted CBOW, one-hot bag of words, LSTM), project to
  ``d_p``, pass through the dispatcher's choice among K bottleneck blocks
  ``fc(d_p -> d_bn) -> fc(d_bn -> d_p)``, reconstruct (the CBOW vector, the bag of words, or the
  token sequence with an LSTM decoder). The autoencoder trains on the reconstruction loss; the
  dispatcher's reward is ``alpha * R_dispatch + (1 - alpha) * (-L_reconstruction)``, where
  ``R_dispatch`` is the routed model's task reward of the sample.
* ``"two-stage"`` (the '+D' of Table 5.2): the same agent over one of the encoders, trained after
  the routed model has been trained with meta labels and frozen; K is the number of meta classes
  and the reward is the frozen model's task reward.

Two additions against collapse (issue 29; both off reproduces the thesis' training):

* ``balance`` (> 0): the mutual information between the sample and its dispatch class, as in IIC,
  ``I = H(mean_b pi_b) - mean_b H(pi_b)`` over the batch, is maximised with this weight beside the
  learner's loss. The first term rewards spreading the batch over the classes, the second confident
  per-sample choices, so only a dispatch that depends on the input scores high (a per-sample entropy
  bonus rewards uncertainty, not spread). ``balance_term="marginal"`` keeps the first term only, the
  entropy of the batch's mean dispatch distribution (a load balance): with target "mixture" the
  likelihood already makes the choices confident, and the confidence term, which commits the
  dispatcher to a partition before the paths have specialised, hurts there (issue 29, the dispatch
  toy's split layout).
* ``target="best-agent"``: the routed model runs every sample through each of the K agents' greedy
  paths (K extra forwards without gradients); the agent with the lowest task loss on the gold label
  is the sample's target, and the dispatcher is trained to predict it (cross-entropy on its values)
  instead of from the sampled reward. Meant for the two-stage dispatcher, whose model is fixed.
* ``target="em"`` (online dispatchers; Kirsch et al. 2018, modular networks trained by generalised
  EM): every agent's path is scored as for "best-agent"; the sample's class is drawn from the
  posterior ``q(k) ~ pi(k | x) exp(-loss_k)`` (the dispatcher's softmax as the prior, the path's
  likelihood of the gold label), the model trains on that class's path (E-step: paths specialise on
  the samples they already explain) and the dispatcher is trained to predict it (M-step). Drawing
  from the posterior rather than taking its argmax keeps ties spread instead of sending them all to
  one class.
* ``target="mixture"`` (online dispatchers; the competitive mixture of experts of Jacobs et al.
  1991, trained as soft EM): every sample runs through all K agents' paths in one batch of K x B rows
  (with gradients, in training only), the paths learn from the posterior-weighted loss
  ``sum_k q(k) loss_k`` with ``q`` the posterior above, and the dispatcher from the cross-entropy to
  ``q`` (together the gradient of the mixture likelihood ``-log sum_k pi(k | x) exp(-loss_k)``). The
  routers learn on one class per sample drawn from ``q``. Unlike "em", every path learns from every
  sample in proportion to how well it explains it, so paths can specialise before the dispatcher has
  (issue 29: on the dispatch toy with the group the premise's only content, every online kind
  recovers the groups with it, 24 of 25 runs, where the RL reward does in 6; on SCI it changes neither
  joint accuracy nor the NMI with the signature, nested is 1-7 points lower, and RBAE-seq collapses).
* ``target="meta"`` (two-stage only): the dispatcher is trained to predict the meta label the model
  was trained with in stage 1 (the training data has it; the test data need not), cross-entropy on its
  values: the frozen model then sees, at test time, the meta class it was trained to expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..routing import ApproxRouter, Trajectory, assign_rewards
from ..routing.execution import grouped_apply

__all__ = [
    "AGENT_OPTIMIZERS",
    "BALANCE_TERMS",
    "DISPATCH_TARGETS",
    "ONLINE_DISPATCHERS",
    "ONLINE_TARGETS",
    "ENCODERS",
    "DispatchOutput",
    "LearnedDispatcher",
    "compact_vocabulary",
]

#: --dispatch values trained jointly with the routed model
ONLINE_DISPATCHERS = ("basic", "rbae-cbow", "rbae-attn", "rbae-onehot", "rbae-seq")
#: what a dispatcher learns from: the RL reward (the thesis) or the best agent's index (see the module docstring)
DISPATCH_TARGETS = ("reward", "best-agent", "meta", "em", "mixture")
#: targets that train the model on the dispatch (online dispatchers only; K forwards per batch)
ONLINE_TARGETS = ("em", "mixture")
#: the balance term weighted by ``balance``: the mutual information, or the marginal entropy only
BALANCE_TERMS = ("mi", "marginal")
#: which optimizer trains the dispatcher's agent: the routers' (SGD at the router rate) or the blocks'
AGENT_OPTIMIZERS = ("routers", "blocks")
#: the RBAE's reconstruction reward: ``raw`` (the thesis, ``-L_rec``) or ``agent-centered`` (minus the
#: mean ``L_rec`` of the batch's samples sent to the same class; issue 29)
RECON_REWARDS = ("raw", "agent-centered")

#: sample encoders a dispatcher can read
ENCODERS = ("cbow", "attn", "onehot", "lstm")
#: the encoder of each online kind
KIND_ENCODER = {"basic": "lstm", "rbae-cbow": "cbow", "rbae-attn": "attn", "rbae-onehot": "onehot", "rbae-seq": "lstm"}


def agent_means(values: Tensor, actions: Tensor, k: int) -> Tensor:
    """``[B]``: for each row, the mean of ``values`` over the rows with the same action (of ``k``)."""
    sums = values.new_zeros(k).index_add_(0, actions, values)
    counts = values.new_zeros(k).index_add_(0, actions, torch.ones_like(values))
    return (sums / counts.clamp_min(1.0))[actions]


def compact_vocabulary(token_lists, vocab_size: int) -> Tensor:
    """``[vocab_size]`` map from token id to a compact index (1..V'; 0 = unseen) over ``token_lists``.

    The one-hot encoder and the reconstructing decoders work on the compact vocabulary of the
    training split (a few thousand words for SCI) instead of the tokenizer's 30k entries.
    """
    seen = torch.zeros(vocab_size, dtype=torch.bool)
    for ids in token_lists:
        if len(ids):
            seen[torch.as_tensor(ids, dtype=torch.long)] = True
    mapping = torch.zeros(vocab_size, dtype=torch.long)
    mapping[seen] = torch.arange(1, int(seen.sum()) + 1)
    return mapping


class _Encoder(nn.Module):
    """``(ids [B, T], mask [B, T]) -> [B, out_dim]``."""

    out_dim: int


#: how the CBOW encoder pools the word vectors: "mean" (the default) or "sum" (the thesis' eq. 6.4)
CBOW_POOLS = ("mean", "sum")


class CBOWFeatures(_Encoder):
    """Mean (``pool="mean"``) or sum (``pool="sum"``, thesis eq. 6.4) of the (frozen) word vectors of the
    real tokens."""

    def __init__(self, embedding: nn.Embedding, pool: str = "mean") -> None:
        super().__init__()
        if pool not in CBOW_POOLS:
            raise ValueError(f"cbow_pool must be one of {CBOW_POOLS}, got {pool!r}")
        self.embedding = embedding
        self.pool = pool
        self.out_dim = embedding.embedding_dim

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        total = (self.embedding(ids) * m).sum(1)
        return total if self.pool == "sum" else total / m.sum(1).clamp_min(1.0)


class AttentionCBOW(_Encoder):
    """Attention-weighted CBOW: ``sum_i softmax_i(v . tanh(W e_i)) e_i`` over the real tokens."""

    def __init__(self, embedding: nn.Embedding, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = embedding
        dim = embedding.embedding_dim
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        self.out_dim = dim

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        e = self.embedding(ids)
        s = self.score(e).squeeze(-1).masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, -1).nan_to_num(0.0)  # an empty sentence has no token to attend to
        return (a.unsqueeze(-1) * e).sum(1)


class OneHotBagOfWords(_Encoder):
    """One-hot bag of words over the compact training vocabulary, through a learned linear map."""

    def __init__(self, vocab_map: Tensor, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("vocab_map", vocab_map.clone(), persistent=True)
        self.vocab_size = int(vocab_map.max()) + 1
        self.weight = nn.Parameter(torch.randn(self.vocab_size, hidden))  # one row per word: counts @ weight
        self.out_dim = hidden

    def counts(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``[B, V']`` word counts of each sample (index 0 = words unseen in training)."""
        compact = self.vocab_map[ids].masked_fill(~mask, 0)
        out = torch.zeros(ids.shape[0], self.vocab_size, device=ids.device)
        return out.scatter_add_(1, compact, mask.float())

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.counts(ids, mask) @ self.weight


class LSTMFeatures(_Encoder):
    """Last hidden state of an LSTM over the (frozen) word vectors."""

    def __init__(self, embedding: nn.Embedding, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = embedding
        self.lstm = nn.LSTM(embedding.embedding_dim, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1)
        packed = pack_padded_sequence(
            self.embedding(ids), lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return h[-1] * (lengths > 0).unsqueeze(1).to(h.dtype)


def build_encoder(
    name: str, embedding: nn.Embedding, hidden: int, vocab_map: Tensor | None, cbow_pool: str = "mean"
) -> _Encoder:
    if name == "cbow":
        return CBOWFeatures(embedding, cbow_pool)
    if name == "attn":
        return AttentionCBOW(embedding, hidden)
    if name == "lstm":
        return LSTMFeatures(embedding, hidden)
    if name == "onehot":
        if vocab_map is None:
            raise ValueError("the one-hot encoder needs the training vocabulary (vocab_map)")
        return OneHotBagOfWords(vocab_map, hidden)
    raise ValueError(f"unknown dispatch encoder {name!r}; choose one of {ENCODERS}")


class SequenceDecoder(nn.Module):
    """LSTM decoder reconstructing the compact token sequence from the bottleneck output (teacher forcing)."""

    def __init__(self, embedding: nn.Embedding, vocab_map: Tensor, code_dim: int, hidden: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.register_buffer("vocab_map", vocab_map.clone(), persistent=True)
        self.init_h = nn.Linear(code_dim, hidden)
        self.lstm = nn.LSTM(embedding.embedding_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, int(vocab_map.max()) + 1)

    def forward(self, code: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """``[B]`` mean token cross-entropy of reconstructing ``ids`` (0 for empty sentences)."""
        b = ids.shape[0]
        h0 = torch.tanh(self.init_h(code)).unsqueeze(0)
        inputs = self.embedding(ids[:, :-1]) if ids.shape[1] > 1 else self.embedding(ids[:, :0])
        start = code.new_zeros(b, 1, self.embedding.embedding_dim)
        out, _ = self.lstm(torch.cat([start, inputs], 1), (h0, torch.zeros_like(h0)))
        logits = self.out(out)
        target = self.vocab_map[ids]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none") * mask
        return ce.sum(1) / mask.sum(1).clamp_min(1)


@dataclass
class DispatchOutput:
    """A dispatch of one batch: the chosen virtual meta class, its trajectory, the reconstruction loss."""

    meta: Tensor  # [B] long, detached
    trajectory: Trajectory  # one-step trajectory of the dispatch decisions
    recon_loss: Tensor | None = None  # [B] with graph (RBAE), else None
    agent_losses: Tensor | None = None  # [B, K] task loss of every agent's path (target="best-agent"), else None
    #: the class to predict, filled by the model: [B] (targets "best-agent", "em", "meta") or the
    #: posterior over the classes [B, K] (target "mixture")
    target: Tensor | None = None

    @property
    def actions(self) -> Tensor:
        return self.trajectory.actions


def em_posterior(values: Tensor, agent_losses: Tensor) -> Tensor:
    """``[B, K]`` posterior over the classes of a batch: ``softmax(log_softmax(values) - agent_losses)``,
    i.e. ``q(k) ~ pi(k | x) p(y | x, k)`` with ``pi`` the dispatcher's softmax and ``p(y | x, k) =
    exp(-loss_k)`` the gold label's likelihood on class ``k``'s path (the E-step of generalised EM)."""
    return torch.softmax(F.log_softmax(values.detach().float(), -1) - agent_losses.detach().float(), -1)


def em_posterior_sample(values: Tensor, agent_losses: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` one class per sample drawn from :func:`em_posterior` (random numbers from ``generator``,
    a CPU generator, so runs are reproducible on any device)."""
    return draw_classes(em_posterior(values, agent_losses), generator)


def draw_classes(q: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` one class per row of the distributions ``q [B, K]`` (uniform numbers from ``generator``,
    a CPU generator)."""
    u = torch.rand(q.shape[0], 1, generator=generator).to(q.device)
    return (q.cumsum(1) < u).sum(1).clamp_max(q.shape[1] - 1)


class LearnedDispatcher(nn.Module):
    """Encode a sample (premise, or premise and hypothesis), choose one of ``num_dispatch`` classes.

    ``kind``: ``"basic"``, an ``"rbae-*"`` kind or ``"two-stage"`` (see the module docstring);
    ``encoder`` overrides the kind's encoder (two-stage: default ``"lstm"``). ``alpha`` weighs the
    task reward against the reconstruction reward (RBAE only). ``detach_state``: keep the dispatch
    loss out of the encoder (default: the RBAE encoders learn from the reconstruction only; the
    basic and two-stage encoders learn from the dispatch loss).
    """

    def __init__(
        self,
        kind: str,
        embedding: nn.Embedding,
        num_dispatch: int,
        encoder: str | None = None,
        hidden: int = 64,
        projection: int = 64,
        bottleneck: int = 16,
        alpha: float = 0.5,
        pair: bool = False,
        vocab_map: Tensor | None = None,
        learner: str = "aac",
        learner_kwargs: dict | None = None,
        exploration: str = "med",
        detach_state: bool | None = None,
        seed: int = 0,
        balance: float = 0.0,
        target: str = "reward",
        agent_optimizer: str = "routers",
        cbow_pool: str = "mean",
        recon_reward: str = "raw",
        state_norm: bool = False,
        balance_term: str = "mi",
    ) -> None:
        super().__init__()
        if balance_term not in BALANCE_TERMS:
            raise ValueError(f"balance_term must be one of {BALANCE_TERMS}, got {balance_term!r}")
        self.balance_term = balance_term
        if recon_reward not in RECON_REWARDS:
            raise ValueError(f"recon_reward must be one of {RECON_REWARDS}, got {recon_reward!r}")
        self.recon_reward = recon_reward
        if cbow_pool not in CBOW_POOLS:
            raise ValueError(f"cbow_pool must be one of {CBOW_POOLS}, got {cbow_pool!r}")
        if agent_optimizer not in AGENT_OPTIMIZERS:
            raise ValueError(f"agent_optimizer must be one of {AGENT_OPTIMIZERS}, got {agent_optimizer!r}")
        self.agent_optimizer = agent_optimizer
        if not balance >= 0.0:
            raise ValueError(f"balance (the mutual-information weight) must be >= 0, got {balance}")
        if target not in DISPATCH_TARGETS:
            raise ValueError(f"target must be one of {DISPATCH_TARGETS}, got {target!r}")
        if target in ONLINE_TARGETS and kind == "two-stage":
            raise ValueError(f"target {target!r} trains the model on the dispatched paths: an online dispatcher, not "
                             "the two-stage one (its model is frozen; use 'best-agent' there)")
        if target == "meta" and kind != "two-stage":
            raise ValueError(f"target 'meta' imitates stage 1's meta labels and needs the two-stage dispatcher, not {kind!r}")
        self.balance = float(balance)
        self.dispatch_target = target
        if kind not in (*ONLINE_DISPATCHERS, "two-stage"):
            raise ValueError(f"unknown dispatcher kind {kind!r}; choose one of {(*ONLINE_DISPATCHERS, 'two-stage')}")
        if num_dispatch < 1:
            raise ValueError(f"num_dispatch must be >= 1, got {num_dispatch}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        enc_choice = encoder
        self.kind = kind
        self.num_dispatch = int(num_dispatch)
        self.alpha = float(alpha)
        self.pair = pair
        self.rbae = kind.startswith("rbae-")
        enc_name = encoder or KIND_ENCODER.get(kind, "lstm")
        if enc_name == "onehot" and vocab_map is None:
            raise ValueError(f"dispatcher {kind!r} with the one-hot encoder needs vocab_map (the training vocabulary)")
        if kind == "rbae-seq" and vocab_map is None:
            raise ValueError("rbae-seq reconstructs token sequences and needs vocab_map (the training vocabulary)")
        self.encoder = build_encoder(enc_name, embedding, hidden, vocab_map, cbow_pool)
        in_dim = self.encoder.out_dim * (2 if pair else 1)
        self.project = nn.Sequential(nn.Linear(in_dim, projection), nn.Tanh())
        if detach_state is None:
            detach_state = self.rbae
        self.policy = ApproxRouter(
            projection,
            num_meta=0,
            depth=1,
            num_actions=self.num_dispatch,
            hidden=hidden,
            detach_state=detach_state,
            learner=learner,
            exploration=exploration,
            seed=seed,
            learner_kwargs=learner_kwargs,
        )
        #: the agent's input standardised per feature with running batch statistics (no affine part; the
        #: running statistics start at the first training batch's, then move by 0.1 a step)
        self.state_norm = nn.BatchNorm1d(projection, affine=False, momentum=0.1, eps=1e-8) if state_norm else None
        self._norm_started = False
        self.bottlenecks = self.decoder = None
        if self.rbae:
            self.bottlenecks = nn.ModuleList(
                nn.Sequential(nn.Linear(projection, bottleneck), nn.ReLU(), nn.Linear(bottleneck, projection))
                for _ in range(self.num_dispatch)
            )
            if kind in ("rbae-cbow", "rbae-attn"):
                self.target = CBOWFeatures(embedding, cbow_pool)
                self.decoder = nn.Linear(projection, embedding.embedding_dim)
            elif kind == "rbae-onehot":
                self.decoder = nn.Linear(projection, self.encoder.vocab_size)
            else:
                self.decoder = SequenceDecoder(embedding, vocab_map, projection, hidden)
        #: the constructor's arguments (JSON): a saved model's config keeps them to rebuild the dispatcher
        self.settings = {
            "kind": kind, "num_dispatch": self.num_dispatch, "encoder": enc_choice, "hidden": hidden,
            "projection": projection, "bottleneck": bottleneck, "alpha": self.alpha, "pair": bool(pair),
            "learner": learner if isinstance(learner, str) else None, "learner_kwargs": dict(learner_kwargs or {}),
            "exploration": exploration, "detach_state": detach_state, "seed": seed,
            "balance": self.balance, "target": target, "agent_optimizer": agent_optimizer,
            **({"cbow_pool": cbow_pool} if cbow_pool != "mean" else {}),  # (folders saved before it: mean)
            **({"recon_reward": recon_reward} if recon_reward != "raw" else {}),  # (saved before it: raw)
            **({"state_norm": True} if state_norm else {}),  # (saved before it: none)
            **({"balance_term": balance_term} if balance_term != "mi" else {}),  # (saved before it: mi)
            "vocab_map_size": None if vocab_map is None else int(vocab_map.numel()),
            "compact_vocab_size": None if vocab_map is None else int(vocab_map.max()) + 1,
        }

    def to_config(self) -> dict:
        """The settings a saved model's ``config.learned_dispatch`` holds (the weights, vocabulary map
        and the agent's generator are in ``model.safetensors``)."""
        if self.settings["learner"] is None:
            raise ValueError("a dispatcher built with a learner object (not a registered name) cannot be saved")
        return {"builder": "learned", **self.settings}

    @classmethod
    def from_config(cls, embedding: nn.Embedding, settings: dict) -> "LearnedDispatcher":
        """A dispatcher of the shapes of :meth:`to_config`'s ``settings`` (its vocabulary map and weights
        are placeholders until the saved state dict is loaded)."""
        s = {k: v for k, v in settings.items() if k not in ("builder", "vocab_map_size", "compact_vocab_size")}
        vocab_map = None
        if settings.get("vocab_map_size"):
            vocab_map = torch.zeros(int(settings["vocab_map_size"]), dtype=torch.long)
            vocab_map[0] = int(settings["compact_vocab_size"]) - 1  # same compact size, filled on load
        return cls(embedding=embedding, vocab_map=vocab_map, **s)

    def set_epoch(self, epoch: int) -> None:
        self.policy.set_epoch(epoch)

    def probabilities(self, out: DispatchOutput) -> Tensor:
        """``[B]`` softmax of the agent's action values at each chosen class (for policy learners the
        policy's probability; for value learners a softmax of the estimates)."""
        values = out.trajectory.values[:, 0]
        return torch.softmax(values.float(), -1).gather(1, out.meta.unsqueeze(1)).squeeze(1)

    def router_parameters(self) -> list[nn.Parameter]:
        """The agent's parameters when the router optimizer trains them (``agent_optimizer="routers"``,
        the default); else none, and the blocks' optimizer trains the whole dispatcher."""
        return list(self.policy.parameters()) if self.agent_optimizer == "routers" else []

    def agent_state(self, z: Tensor) -> Tensor:
        """The agent's input: the projection ``z``, standardised per feature when ``state_norm`` is on
        (batch statistics in training, running ones in eval and for a batch of one)."""
        if self.state_norm is None:
            return z
        n = self.state_norm
        use_batch = self.training and z.shape[0] > 1
        if use_batch and not self._norm_started:  # read the marker once, not every step
            if int(n.num_batches_tracked) == 0:  # start the running statistics at the first batch's
                with torch.no_grad():
                    n.running_mean.copy_(z.mean(0))
                    n.running_var.copy_(z.var(0))
                    n.num_batches_tracked.fill_(1)  # a marker (saved): the statistics have started
            self._norm_started = True
        return F.batch_norm(z, n.running_mean, n.running_var, training=use_batch, momentum=n.momentum, eps=n.eps)

    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.encoder(ids, mask)

    def reconstruction_loss(self, code: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """``[B]`` reconstruction loss of the premise from the bottleneck output ``code``."""
        if self.kind == "rbae-seq":
            return self.decoder(code, ids, mask)
        if self.kind == "rbae-onehot":
            counts = self.encoder.counts(ids, mask)
            logp = F.log_softmax(self.decoder(code), -1)
            return -(counts * logp).sum(1) / counts.sum(1).clamp_min(1)
        target = self.target(ids, mask).detach()
        return ((self.decoder(code) - target) ** 2).mean(1)

    def forward(
        self, premise_ids: Tensor, premise_mask: Tensor, hypothesis_ids: Tensor | None = None,
        hypothesis_mask: Tensor | None = None,
    ) -> DispatchOutput:
        h = self.encode(premise_ids, premise_mask)
        if self.pair:
            if hypothesis_ids is None:
                raise ValueError("this dispatcher reads premise and hypothesis (pair=True): pass both")
            h = torch.cat([h, self.encode(hypothesis_ids, hypothesis_mask)], 1)
        z = self.project(h)
        dec = self.policy.decide(self.agent_state(z), None, 0)
        b = z.shape[0]
        traj = Trajectory.from_decisions(
            torch.zeros(b, dtype=torch.long, device=z.device),
            [dec],
            [torch.ones(b, dtype=torch.bool, device=z.device)],
            None,
        )
        recon = None
        if self.rbae:
            code = grouped_apply(z, dec.actions, self.bottlenecks)
            recon = self.reconstruction_loss(code, premise_ids, premise_mask)
        return DispatchOutput(dec.actions.detach(), traj, recon)

    def dispatch_reward(self, out: DispatchOutput, task_reward: Tensor) -> Tensor:
        """``alpha * R_dispatch + (1 - alpha) * (-L_rec)`` for the RBAE, the task reward otherwise.

        ``recon_reward="agent-centered"``: ``L_rec`` minus the batch's mean ``L_rec`` of the samples
        dispatched to the same class, so an agent's bottleneck being better trained (having been
        chosen more) earns nothing; what is rewarded is reconstructing *this* sample better than the
        agent's other samples."""
        if out.recon_loss is None:
            return task_reward
        rec = out.recon_loss.detach()
        if self.recon_reward == "agent-centered":
            rec = rec - agent_means(rec, out.meta, self.num_dispatch)
        return self.alpha * task_reward + (1.0 - self.alpha) * (-rec)

    def fill_target(self, out: DispatchOutput, meta: Tensor | None, agent_losses) -> None:
        """Give a training batch's dispatch its target: the lowest-loss agent (``agent_losses()``, called
        only for ``target="best-agent"`` and ``"em"``: K forwards), a draw from the EM posterior (``"em"``,
        which also becomes the batch's dispatch: the model trains on that path) or the batch's ``meta``
        labels (``"meta"``)."""
        if self.dispatch_target == "best-agent":
            out.agent_losses = agent_losses()
            out.target = out.agent_losses.argmin(1)
        elif self.dispatch_target == "em":
            out.agent_losses = agent_losses()
            out.target = em_posterior_sample(out.trajectory.values[:, 0], out.agent_losses, self.policy.generator)
            out.meta = out.target
        elif self.dispatch_target == "meta":
            if meta is None:
                raise ValueError("target='meta' trains the dispatcher on the batch's meta labels: the batch has none")
            out.target = meta

    def mutual_information(self, out: DispatchOutput) -> Tensor:
        """``H(mean pi) - mean H(pi)`` (nats) of the batch's dispatch distributions ``pi = softmax(values)``."""
        logp = F.log_softmax(out.trajectory.values[:, 0].float(), -1)
        p = logp.exp()
        marginal = p.mean(0)
        h_marginal = -(marginal * marginal.clamp_min(1e-12).log()).sum()
        h_conditional = -(p * logp).sum(1).mean()
        return h_marginal - h_conditional

    def marginal_entropy(self, out: DispatchOutput) -> Tensor:
        """``H(mean pi)`` (nats): the entropy of the batch's mean dispatch distribution (the first term of
        :meth:`mutual_information`, equal up to rounding)."""
        marginal = F.softmax(out.trajectory.values[:, 0].float(), -1).mean(0)
        return -(marginal * marginal.clamp_min(1e-12).log()).sum()

    def balance_value(self, out: DispatchOutput) -> Tensor:
        """The term ``balance`` weighs: the mutual information or (``balance_term="marginal"``) ``H(mean pi)``."""
        return self.mutual_information(out) if self.balance_term == "mi" else self.marginal_entropy(out)

    def loss(self, out: DispatchOutput, task_reward: Tensor) -> Tensor:
        """The agent's loss (the learner's on its rewarded decisions, or the cross-entropy to the best
        agent, or to the posterior for "mixture"), minus ``balance`` times the balance term (the mutual
        information, or the marginal entropy), plus the reconstruction loss (RBAE)."""
        if self.dispatch_target != "reward":
            if out.target is None:
                raise ValueError(f"target={self.dispatch_target!r} needs DispatchOutput.target: the routed model fills it "
                                 "in training (every agent's loss for 'best-agent', the batch's meta for 'meta')")
            total = F.cross_entropy(out.trajectory.values[:, 0].float(), out.target)
        else:
            assign_rewards(out.trajectory, self.dispatch_reward(out, task_reward.detach()))
            total = self.policy.loss(out.trajectory)
        if self.balance > 0.0:
            total = total - self.balance * self.balance_value(out)
        if out.recon_loss is not None:
            total = total + out.recon_loss.mean()
        return total
