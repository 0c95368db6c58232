"""SCI experiments shared by the recipes and benchmarks: data preparation and one method's run.

Recipes parse arguments and call these functions; no recipe copies the training loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from datasets import ClassLabel, DatasetDict
from torch.utils.data import DataLoader

from ..analysis.plots import plot_dispatch_distribution
from ..data import EMBEDDED_SCI
from ..data.encoding import NLICollator, encode_nli
from ..data.sci import VARIANTS as SCI_VARIANTS
from ..data.sci import check_meta_coverage, load_sci, subsample_covering
from ..models.dispatcher import AGENT_OPTIMIZERS, BALANCE_TERMS, CBOW_POOLS, DISPATCH_TARGETS, ENCODERS, ONLINE_DISPATCHERS, ONLINE_TARGETS, RECON_REWARDS, LearnedDispatcher, compact_vocabulary
from ..dispatch.offline import OfflineDispatcher, dispatch_dataset
from ..routing import LEARNERS, parse_learner_args
from ..routing.config import check_at_least
from ..models.embeddings import WordVectors, load_word_vectors
from ..models.auto import MODEL_KINDS
from ..models.nli import NLIModelConfig, NLIRoutingModel
from ..training.loop import TrainConfig, train

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = EMBEDDED_SCI / "joint"

#: Training defaults of the SCI recipes. The library's TrainConfig keeps plain SGD for the blocks
#: (the thesis' choice), but on MiniLM CBOW features SGD stays near the majority class on SCI joint
#: (about 0.50 test accuracy after 6 epochs on 8k samples, lr 0.05-0.2, with or without momentum),
#: while Adam at 2e-3 reaches 0.75-0.81; the tabular routers keep SGD at 5x that rate (0.01):
#: at 50x (0.1) the greedy choices of the agents flipped about every batch.
RECIPE_TRAIN_DEFAULTS: dict[str, Any] = {"block_optimizer": "adam", "lr": 0.002, "router_lr_ratio": 5.0}

#: method name -> (model overrides, meta source). Meta source "signature" (the data set's own meta
#: column, also genre) or an offline dispatch method. The overrides' "dispatch" entry attaches a
#: learned dispatcher (the meta column is then used for reports only); "two_stage" trains a
#: dispatcher after the model. Any method name with the suffix "+D" is that method followed by
#: two-stage dispatch over its meta classes (e.g. "wp-signature+D" = "wp-two-stage").
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "cbow": ({"route": "none", "meta_keyword": True}, "signature"),
    "wp-shared": ({"route": "wp", "wp_width": 1, "meta_keyword": True}, "signature"),
    # the unrouted control of equal depth: every word through one shared projection, no router
    "cbow-projection": ({"route": "projection", "meta_keyword": True}, "signature"),
    "wp-signature": ({"route": "wp"}, "signature"),
    "wp-signature-kw": ({"route": "wp", "meta_keyword": True}, "signature"),
    "wp-kmeans": ({"route": "wp"}, "kmeans"),
    "wp-agglomerative": ({"route": "wp"}, "agglomerative"),
    "wp-dbscan": ({"route": "wp"}, "dbscan"),
    "classifier-signature": ({"route": "classifier"}, "signature"),
    # learned dispatchers trained online with the model (chapter 6): K virtual meta classes
    "wp-basic": ({"route": "wp", "dispatch": "basic"}, "signature"),
    "wp-rbae-cbow": ({"route": "wp", "dispatch": "rbae-cbow"}, "signature"),
    "wp-rbae-attn": ({"route": "wp", "dispatch": "rbae-attn"}, "signature"),
    "wp-rbae-onehot": ({"route": "wp", "dispatch": "rbae-onehot"}, "signature"),
    "wp-rbae-seq": ({"route": "wp", "dispatch": "rbae-seq"}, "signature"),
    # two-stage dispatch (5.3.3, the "+D" rows): train with signatures, then a dispatcher
    "wp-two-stage": ({"route": "wp", "two_stage": True}, "signature"),
    # LSTM encoders (thesis 5.3.1.2): unrouted (meta keyword), routed classifier, routed I2H / H2H
    "lstm": ({"model": "lstm", "route": "none", "lstm_route": "none", "meta_keyword": True}, "signature"),
    "lstm-classifier": ({"model": "lstm", "route": "classifier", "lstm_route": "none"}, "signature"),
    "lstm-i2h": ({"model": "lstm", "route": "none", "lstm_route": "i2h"}, "signature"),
    "lstm-h2h": ({"model": "lstm", "route": "none", "lstm_route": "h2h"}, "signature"),
}



def method_config(model_cfg: NLIModelConfig, overrides: dict[str, Any]) -> tuple[NLIModelConfig, type]:
    """The config (and model class) of a method: ``model_cfg``'s fields (shared by every kind) plus the
    method's overrides; a combination the config refuses raises ``ValueError`` here."""
    overrides = {k: v for k, v in overrides.items() if k not in ("dispatch", "two_stage")}
    kind = MODEL_KINDS[overrides.pop("model", "cbow")]  # the registered kinds (cbow, lstm)
    config_cls, model_cls = kind.settings_class, kind.model_class
    base = {f.name: getattr(model_cfg, f.name) for f in fields(model_cfg) if f.name not in overrides}
    names = {f.name for f in fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in base.items() if k in names and (config_cls is NLIModelConfig or k != "route")}, **overrides)
    return cfg, model_cls


def build_model(model_cfg: NLIModelConfig, overrides: dict[str, Any], vectors: WordVectors) -> NLIRoutingModel:
    """The model of a method (see :func:`method_config`)."""
    cfg, model_cls = method_config(model_cfg, overrides)
    return model_cls(cfg, vectors.weight, vectors.pad_id)


@dataclass
class DataArgs:
    """Where the SCI data and the word vectors come from."""

    data_dir: str = field(
        default=str(DEFAULT_DATA_DIR),
        metadata={"help": "SCI folder: train/validation/test.jsonl or the official ci_latest_* files"},
    )
    variant: str | None = field(default=None, metadata={"help": "variant for the official file names"})
    embeddings: str = field(
        default="minilm",
        metadata={"help": "word vectors: minilm (packaged MiniLM), a GloVe .txt path, random:<dim>, or a HF id"},
    )
    max_length: int = field(default=64, metadata={"help": "tokens kept per sentence"})
    dispatch_k: int = field(default=5, metadata={"help": "clusters of the offline dispatcher"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap the training set (quick runs)"})
    allow_unseen_meta: bool = field(
        default=False,
        metadata={"help": "allow signatures in validation/test that training never saw (their agents stay untrained)"},
    )

    def __post_init__(self) -> None:
        check_at_least(self, max_length=1, dispatch_k=1, max_train_samples=1)
        check_data_paths(self)


def check_data_paths(args: Any) -> None:
    """Refuse, when the flags are parsed, a data folder or a word-vector file that does not exist and a
    variant name that is not one (issue 31: these failed after minutes, or were ignored)."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not Path(data_dir).is_dir():
        kind = "a file, not a folder" if Path(data_dir).exists() else "does not exist"
        where = "" if Path(data_dir).is_absolute() else f" (relative to {Path.cwd()})"
        raise ValueError(f"--data_dir {data_dir}: {kind}{where}")
    variant = getattr(args, "variant", None)
    if variant is not None and variant not in SCI_VARIANTS:
        raise ValueError(f"--variant must be one of {SCI_VARIANTS}, got {variant!r}")
    spec = str(getattr(args, "embeddings", "") or "")
    looks_like_a_path = spec.endswith((".txt", ".txt.gz", ".gz")) or spec.startswith(("/", "./", "../", "~"))
    if looks_like_a_path and not Path(spec).expanduser().exists():
        raise ValueError(f"--embeddings {spec}: no such file (a GloVe .txt, minilm, random:<dim> or a Hugging Face id)")
    if spec.startswith("random:"):
        parts = spec.split(":")
        if len(parts) > 3 or not all(x.lstrip("-").isdigit() for x in parts[1:]):
            raise ValueError(f"--embeddings {spec}: bad random spec; expected 'random:<dim>[:<seed>]'")
        if int(parts[1]) < 1:
            raise ValueError(f"--embeddings {spec}: dim must be positive, got {int(parts[1])}")


def check_labels(prepared: "PreparedData", num_classes: int) -> None:
    """The model's ``num_classes`` must be the data's number of labels."""
    names = prepared.label_names or []
    if names and int(num_classes) != len(names):
        raise ValueError(f"--num_classes {num_classes}, but the data has {len(names)} labels {list(names)}: "
                         f"use --num_classes {len(names)}")


@dataclass
class DispatchArgs:
    """Learned dispatchers: which encoder, agent and objective (thesis 5.3.3 and chapter 6)."""

    dispatch_encoder: str = field(
        default="lstm", metadata={"help": f"encoder of the two-stage dispatcher: one of {ENCODERS}"}
    )
    dispatch_input: str = field(
        default="auto",
        metadata={"help": "what the dispatcher reads: premise, pair, or auto (pair for two-stage dispatch: the "
                          "implicative construction is in the hypothesis for about a third of the SCI pairs; premise "
                          "for the online dispatchers, the thesis' input; BENCHMARKS.md issue 29)"},
    )
    dispatch_learner: str = field(default="aac", metadata={"help": "decision-making algorithm of the dispatcher"})
    dispatch_learner_args: str = field(
        default="entropy_coef=0.01", metadata={"help": "dispatcher learner options, key=value pairs"}
    )
    dispatch_hidden: int = field(default=64, metadata={"help": "encoder/agent hidden size"})
    dispatch_projection: int = field(default=64, metadata={"help": "RBAE projection size d_p"})
    dispatch_bottleneck: int = field(default=16, metadata={"help": "RBAE bottleneck size d_bn"})
    dispatch_alpha: float = field(
        default=0.5, metadata={"help": "RBAE reward weight: alpha * task reward + (1 - alpha) * (-reconstruction loss)"}
    )
    stage2_epochs: int = field(default=3, metadata={"help": "epochs of the two-stage dispatcher (model fixed)"})
    dispatch_warm_start: bool = field(
        default=True,
        metadata={"help": "fine-tuning a two-stage model on a second data set (--nested_dir) continues its dispatcher "
                          "instead of training a new one (--no_dispatch_warm_start: a new one, as before issue 29)"},
    )
    dispatch_balance: float | None = field(
        default=None,
        metadata={"help": "weight of the mutual information H(mean pi) - mean H(pi) between samples and dispatch "
                          "classes, maximised beside the dispatcher's loss (0: off, the thesis; default: 1 with the RL "
                          "reward, 0.1 with the mixture target, 0 with the targets meta, best-agent and em; "
                          "BENCHMARKS.md issue 29)"},
    )
    dispatch_balance_term: str = field(
        default="auto",
        metadata={"help": f"the term --dispatch_balance weighs: one of {BALANCE_TERMS} or auto (mi: the mutual "
                          "information; marginal: the entropy of the batch's mean dispatch distribution only, a load "
                          "balance; auto: marginal with the mixture target, mi otherwise; BENCHMARKS.md issue 29)"},
    )
    dispatch_agent_optimizer: str = field(
        default="blocks",
        metadata={"help": f"optimizer of the dispatcher's agent: one of {AGENT_OPTIMIZERS} (routers: SGD at the router "
                          "rate, like the routers' tables; blocks: the blocks' optimizer, e.g. Adam in the recipes)"},
    )
    dispatch_target: str = field(
        default="auto",
        metadata={"help": f"what the dispatcher learns from: one of {DISPATCH_TARGETS} or auto (reward: the thesis' RL; "
                          "best-agent: predict the agent whose path has the lowest loss, K forwards per batch; em: online, the "
                          "class drawn from the posterior dispatcher x path likelihood, the model trains on its path "
                          "(Kirsch et al. 2018), K forwards per batch; mixture: online, every path learns from every "
                          "sample weighted by that posterior and the dispatcher predicts it (soft EM of a mixture of "
                          "experts, Jacobs et al. 1991), K times the model's compute per batch; meta: "
                          "two-stage only, predict the meta label stage 1 trained with; auto: meta for two-stage "
                          "dispatch, reward for the online dispatchers; BENCHMARKS.md issue 29)"},
    )
    dispatch_cbow_pool: str = field(
        default="mean",
        metadata={"help": f"the CBOW encoder (rbae-cbow, --dispatch_encoder cbow) and RBAE-CBOW's reconstruction target: "
                          f"one of {CBOW_POOLS} of the word vectors (sum: the thesis' eq. 6.4)"},
    )
    dispatch_recon_reward: str = field(
        default="raw",
        metadata={"help": f"the RBAE's reconstruction reward: one of {RECON_REWARDS} (raw: -L_rec, the thesis; "
                          "agent-centered: minus the batch mean L_rec of the samples sent to the same class, so a "
                          "bottleneck trained more earns nothing for it; BENCHMARKS.md issue 29)"},
    )
    dispatch_agent_to_encoder: bool | None = field(
        default=None,
        metadata={"help": "whether the dispatcher agent's loss (and the mutual-information term) trains its encoder "
                          "(default: yes for basic and two-stage, and for rbae-seq with its input standardised; no for "
                          "the other RBAE kinds, whose encoders learn from the reconstruction only; rbae-seq's "
                          "saturates without it; BENCHMARKS.md issue 29)"},
    )
    dispatch_state_norm: bool | None = field(
        default=None,
        metadata={"help": "standardise the dispatcher agent's input per feature with running batch statistics (default: "
                          "on for the online dispatchers, whose encodings differ by ~1e-2 between samples (rbae-seq: "
                          "~1e-3) so their agents saw one input and started collapsed on SCI; off for two-stage; "
                          "BENCHMARKS.md issue 29)"},
    )

    def __post_init__(self) -> None:
        if self.dispatch_encoder not in ENCODERS:
            raise ValueError(f"dispatch_encoder must be one of {ENCODERS}, got {self.dispatch_encoder!r}")
        if self.dispatch_input not in ("premise", "pair", "auto"):
            raise ValueError(f"dispatch_input must be 'premise', 'pair' or 'auto', got {self.dispatch_input!r}")
        check_at_least(self, dispatch_hidden=1, dispatch_projection=1, dispatch_bottleneck=1, stage2_epochs=1)
        if not 0.0 <= self.dispatch_alpha <= 1.0:
            raise ValueError(f"dispatch_alpha must be in [0, 1], got {self.dispatch_alpha}")
        if self.dispatch_balance is not None and not self.dispatch_balance >= 0.0:
            raise ValueError(f"dispatch_balance must be >= 0, got {self.dispatch_balance}")
        if self.dispatch_agent_optimizer not in AGENT_OPTIMIZERS:
            raise ValueError(f"dispatch_agent_optimizer must be one of {AGENT_OPTIMIZERS}, "
                             f"got {self.dispatch_agent_optimizer!r}")
        if self.dispatch_balance_term not in (*BALANCE_TERMS, "auto"):
            raise ValueError(f"dispatch_balance_term must be one of {(*BALANCE_TERMS, 'auto')}, "
                             f"got {self.dispatch_balance_term!r}")
        if self.dispatch_target not in (*DISPATCH_TARGETS, "auto"):
            raise ValueError(f"dispatch_target must be one of {(*DISPATCH_TARGETS, 'auto')}, got {self.dispatch_target!r}")
        parse_learner_args(self.dispatch_learner_args)
        if self.dispatch_cbow_pool not in CBOW_POOLS:
            raise ValueError(f"dispatch_cbow_pool must be one of {CBOW_POOLS}, got {self.dispatch_cbow_pool!r}")
        if self.dispatch_recon_reward not in RECON_REWARDS:
            raise ValueError(f"dispatch_recon_reward must be one of {RECON_REWARDS}, got {self.dispatch_recon_reward!r}")
        if self.dispatch_learner not in LEARNERS:
            raise ValueError(f"dispatch_learner: unknown learner {self.dispatch_learner!r}; registered learners: "
                             f"{sorted(LEARNERS)}")

    def check_method(self, method: str) -> None:
        """Raise ``ValueError`` when these settings cannot train ``method``'s dispatcher (before any data loads)."""
        overrides, _ = resolve_method(method)
        online = "dispatch" in overrides
        if self.dispatch_target == "meta" and online:
            raise ValueError("--dispatch_target meta imitates stage 1's meta labels: it needs a two-stage method "
                             f"(--two_stage or a '+D' name), not the online dispatcher {overrides['dispatch']!r}")
        if self.dispatch_target in ONLINE_TARGETS and not online:
            raise ValueError(f"--dispatch_target {self.dispatch_target} trains the model on the dispatched paths: it "
                             f"needs an online dispatcher ({', '.join(ONLINE_DISPATCHERS)}), not {method!r}")

    def resolved(self, kind: str) -> dict[str, Any]:
        """``{"input", "target", "balance", "balance_term", "state_norm", "agent_to_encoder"}`` of a dispatcher of ``kind``
        (the ``auto`` / unset values resolved)."""
        two_stage = kind == "two-stage"
        target = self.dispatch_target if self.dispatch_target != "auto" else ("meta" if two_stage else "reward")
        source = self.dispatch_input if self.dispatch_input != "auto" else ("pair" if two_stage else "premise")
        default_balance = {"reward": 1.0, "mixture": 0.1}.get(target, 0.0)
        balance = self.dispatch_balance if self.dispatch_balance is not None else default_balance
        term = (self.dispatch_balance_term if self.dispatch_balance_term != "auto"
                else ("marginal" if target == "mixture" else "mi"))
        seq = kind == "rbae-seq"  # issue 29: its encoder saturates and its agent collapses without both
        # issue 29: every online agent standardises its input (without it their inputs differ by ~1e-2 between
        # samples and basic / RBAE-CBOW / RBAE-attn start collapsed in epoch 1); two-stage imitates meta labels
        norm = self.dispatch_state_norm if self.dispatch_state_norm is not None else not two_stage
        to_encoder = (self.dispatch_agent_to_encoder if self.dispatch_agent_to_encoder is not None
                      else (seq and norm) or not kind.startswith("rbae-"))
        return {"input": source, "target": target, "balance": balance, "balance_term": term, "state_norm": norm,
                "agent_to_encoder": to_encoder}

    def build(self, kind: str, model: NLIRoutingModel, num_dispatch: int, vocab_map, seed: int) -> LearnedDispatcher:
        """The dispatcher of ``kind`` for ``model`` (sharing its frozen word vectors)."""
        settings = self.resolved(kind)
        return LearnedDispatcher(
            kind,
            model.encoder.embedding,
            num_dispatch,
            encoder=self.dispatch_encoder if kind == "two-stage" else None,
            hidden=self.dispatch_hidden,
            projection=self.dispatch_projection,
            bottleneck=self.dispatch_bottleneck,
            alpha=self.dispatch_alpha,
            pair=settings["input"] == "pair",
            vocab_map=vocab_map,
            learner=self.dispatch_learner,
            learner_kwargs=parse_learner_args(self.dispatch_learner_args),
            seed=seed + 7,
            balance=settings["balance"],
            balance_term=settings["balance_term"],
            target=settings["target"],
            agent_optimizer=self.dispatch_agent_optimizer,
            cbow_pool=self.dispatch_cbow_pool,
            recon_reward=self.dispatch_recon_reward,
            state_norm=settings["state_norm"],
            detach_state=not settings["agent_to_encoder"],
        )


#: values of the recipes' --dispatch: meta labels, offline clusters, learned online dispatchers
DISPATCH_CHOICES = ("signature", "kmeans", "agglomerative", "dbscan", *ONLINE_DISPATCHERS)


def dispatch_method(dispatch: str, two_stage: bool = False) -> str:
    """The WP method name of a ``--dispatch`` strategy (``+D`` appended for two-stage)."""
    if dispatch not in DISPATCH_CHOICES:
        raise ValueError(f"--dispatch must be one of {DISPATCH_CHOICES}, got {dispatch!r}")
    if two_stage and dispatch in ONLINE_DISPATCHERS:
        raise ValueError(
            f"--two_stage trains a dispatcher after a model routed on meta labels or clusters; "
            f"{dispatch!r} is already a learned dispatcher"
        )
    return f"wp-{dispatch}" + ("+D" if two_stage else "")


def resolve_method(method: str) -> tuple[dict[str, Any], str]:
    """``(overrides, meta source)`` of a method name, including the ``+D`` (two-stage) suffix."""
    base, two_stage = (method[:-2], True) if method.endswith("+D") else (method, False)
    if base not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)} (optionally with '+D')")
    overrides, source = METHODS[base]
    overrides = dict(overrides)
    if two_stage:
        if "dispatch" in overrides:
            raise ValueError(f"{method!r}: a method with an online dispatcher has no meta labels to train stage 1 on")
        overrides["two_stage"] = True
    return overrides, source


@dataclass
class PreparedData:
    """Tokenized splits, the word vectors, and the meta column routed on ("signature", "genre")."""

    data: DatasetDict
    vectors: WordVectors
    meta_names: list[str]
    meta_column: str = "signature"
    max_length: int = 64

    @property
    def label_names(self) -> list[str] | None:
        feature = self.data["train"].features.get("label")
        return list(feature.names) if isinstance(feature, ClassLabel) else None


def prepare_sci(args: DataArgs) -> PreparedData:
    """Load, check and tokenize an SCI folder with the tokenizer of the chosen word vectors."""
    path = Path(args.data_dir)
    if not path.exists():
        raise FileNotFoundError(f"SCI data folder {path} does not exist")
    dsd = load_sci(path, variant=args.variant)
    if args.max_train_samples:
        n = min(args.max_train_samples, len(dsd["train"]))
        logger.info("using %d of %d training samples (--max_train_samples; every signature kept)", n, len(dsd["train"]))
        try:
            dsd["train"] = subsample_covering(dsd["train"], n, "signature")
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    if args.allow_unseen_meta:
        unseen = check_meta_coverage(dsd, "signature", allow_unseen=True)
        if unseen:
            logger.warning("signatures unseen in training (their agents stay untrained): %s", sorted(unseen))
    else:
        try:
            check_meta_coverage(dsd, "signature")
        except ValueError as err:
            raise ValueError(
                f"{path}: {err}. A meta label unseen in training has no trained agent; pass "
                "--allow_unseen_meta to train anyway (or route with a dispatcher)"
            ) from None
    vectors = load_word_vectors(args.embeddings)
    dsd = encode_nli(dsd, vectors.tokenizer, max_length=args.max_length)
    names = dsd["train"].features["signature"].names
    return PreparedData(dsd, vectors, list(names), max_length=args.max_length)


def offline_input(prepared: PreparedData) -> dict[str, Any]:
    """What the offline dispatchers encode: the mean word vector of the premise tokens the model reads
    (its first ``max_length`` tokens), saved with the model's centroids."""
    return {"text_column": "premise", "max_length": prepared.max_length}


def method_data(
    prepared: PreparedData, meta_source: str, k: int, seed: int, dispatcher: OfflineDispatcher | None = None
) -> tuple[DatasetDict, str, list[str], OfflineDispatcher | None]:
    """The data set with the meta column a method routes on, its name, its class names and the
    offline dispatcher that made the column (``None`` for the data's own meta column).

    A fitted ``dispatcher`` is applied instead of fitting a new one (fine-tuning on another variant).
    """
    if meta_source in ("signature", "meta"):  # the data set's own meta column (signature, genre)
        return prepared.data, prepared.meta_column, prepared.meta_names, None
    dsd, dispatcher = dispatch_dataset(
        prepared.data, prepared.vectors, method=meta_source, k=k, seed=seed, dispatcher=dispatcher,
        **offline_input(prepared),
    )
    return dsd, "cluster", [f"cluster_{i}" for i in range(dispatcher.k)], dispatcher


def make_loaders(
    dsd: DatasetDict, pad_id: int, meta_column: str, cfg: TrainConfig, data_meta_column: str | None = None
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """Training and evaluation data loaders over the tokenized splits; ``data_meta_column`` (the data's
    own meta column when routing on another one, e.g. clusters) reaches the routing records."""
    if data_meta_column == meta_column or (data_meta_column is not None and data_meta_column not in dsd["train"].column_names):
        data_meta_column = None
    collate = NLICollator(pad_id, meta_column, data_meta_column)
    keep = ["premise_ids", "hypothesis_ids", "label", meta_column] + ([data_meta_column] if data_meta_column else [])

    def subset(split: str):
        return dsd[split].select_columns(keep).with_format(None)

    train_loader = DataLoader(subset("train"), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    evals = {
        split: DataLoader(subset(split), batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate)
        for split in ("validation", "test")
        if split in dsd
    }
    return train_loader, evals


def align_meta(*prepared: PreparedData) -> list[str]:
    """Give several data sets one list of meta classes (the union, in first-seen order), in place.

    Used before fine-tuning a model trained on one SCI variant on another (joint -> nested): the
    model's agents are indexed by class name, so both data sets must number the classes alike.
    Classes absent from a data set keep untrained agents until data of theirs arrives.
    """
    names: list[str] = []
    for p in prepared:
        names += [n for n in p.meta_names if n not in names]
    for p in prepared:
        if p.meta_names == names:
            continue
        index = {n: i for i, n in enumerate(names)}
        old = list(p.meta_names)
        col = p.meta_column
        features = p.data["train"].features.copy()
        features[col] = ClassLabel(names=names)
        p.data = p.data.map(
            lambda batch: {col: [index[old[v]] for v in batch[col]]}, batched=True, features=features,
            desc=f"aligning {col} classes",
        )
        p.meta_names = names
    return names


def _fit(
    model: NLIRoutingModel,
    dsd: DatasetDict,
    meta_column: str,
    meta_names: list[str],
    pad_id: int,
    train_cfg: TrainConfig,
    out: Path | None,
    accelerator,
    two_stage: bool,
    dispatch_args: DispatchArgs,
    vocab_map,
    tokenizer=None,
    dispatcher=None,
) -> dict[str, Any]:
    """Train ``model`` on ``dsd``; with ``two_stage``, then train a dispatcher with the model fixed (a new
    one, or ``dispatcher`` continued). The run folders get the ``tokenizer`` beside the model."""
    train_loader, eval_loaders = make_loaders(dsd, pad_id, meta_column, train_cfg, model.config.data_meta_column)
    result = train(model, train_loader, eval_loaders, train_cfg, out, meta_names, accelerator, tokenizer=tokenizer)
    if two_stage:
        stage1 = {k: result[k] for k in ("final", "best_epoch", "train_seconds", "history")}
        if dispatcher is None:
            dispatcher = dispatch_args.build("two-stage", model, model.config.num_meta, vocab_map, train_cfg.seed)
        model.attach_dispatcher(dispatcher)
        model.freeze_routing()
        cfg2 = replace(train_cfg, epochs=dispatch_args.stage2_epochs)
        result = train(model, train_loader, eval_loaders, cfg2, out / "stage2" if out else None, meta_names, accelerator,
                       tokenizer=tokenizer)
        result["stage1"] = stage1
        result["train_seconds"] += stage1["train_seconds"]
    return result


def summarize(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """The summary row of a run (accuracies, entropies, best epoch, time)."""
    final = result["final"]
    shown = final.get("test", final.get("validation", {}))
    summary = {
        "method": method,
        "validation_accuracy": final.get("validation", {}).get("accuracy"),
        "test_accuracy": final.get("test", {}).get("accuracy"),
        "routing_entropy": shown.get("routing_entropy_0", {}).get("overall"),
        # every routed layer (issue 29): selection entropy, distinct paths, share of the top path
        "routing_layers": [
            {"entropy": shown[k].get("overall"), "distinct_paths": shown.get(f"collapse_{k[16:]}", {}).get("distinct_paths"),
             "top_path_share": shown.get(f"collapse_{k[16:]}", {}).get("top_path_share"),
             "top_block_share_per_depth": shown.get(f"collapse_{k[16:]}", {}).get("top_block_share")}
            for k in sorted((k for k in shown if k.startswith("routing_entropy_")), key=lambda k: int(k[16:]))
        ],
        "dispatch_entropy": shown.get("dispatch", {}).get("entropy"),
        "best_epoch": result["best_epoch"],
        "train_seconds": result["train_seconds"],
    }
    if "stage1" in result:
        summary["test_accuracy_with_meta"] = result["stage1"]["final"].get("test", {}).get("accuracy")
    return summary


def describe_model(
    model: NLIRoutingModel, prepared: PreparedData, meta_column: str, meta_names: list[str], learned: str | None,
) -> None:
    """Record what inference needs in the model's config (label and meta names, the column routed on,
    tokens kept, word vectors); the meta source (centroids, a learned dispatcher) records itself."""
    model.describe(
        label_names=prepared.label_names,
        meta_names=[f"dispatch_{i}" for i in range(model.config.num_meta)] if learned else meta_names,
        meta_column="dispatch" if learned else meta_column,
        data_meta_column=prepared.meta_column,
        data_meta_names=prepared.meta_names,
        input_max_length=prepared.max_length,
        embeddings=prepared.vectors.source,
    )


def run_method(
    method: str,
    prepared: PreparedData,
    model_cfg: NLIModelConfig,
    train_cfg: TrainConfig,
    dispatch_k: int = 5,
    output_dir: str | Path | None = None,
    accelerator=None,
    dispatch_args: DispatchArgs | None = None,
    finetune: PreparedData | None = None,
    finetune_epochs: int = 3,
) -> dict[str, Any]:
    """Train and evaluate one method (see :data:`METHODS`); returns the loop's result plus a summary.

    Online dispatchers route on ``dispatch_k`` virtual classes. A two-stage method trains the model
    on its meta classes, then (model fixed) a dispatcher for ``stage2_epochs``; its reported
    accuracy is the dispatcher's, without meta labels, and ``result["stage1"]`` keeps the accuracy
    with them. ``finetune`` (e.g. the nested variant; align its meta classes with
    :func:`align_meta` first) continues training the same model on a second data set for
    ``finetune_epochs`` (a two-stage method fine-tunes the model with meta labels, then trains a
    new dispatcher there); its result is ``result["finetune"]``.
    """
    overrides, meta_source = resolve_method(method)
    set_seed(train_cfg.seed)  # everything drawn from here on (clusters, blocks, routers, dispatchers) follows the seed
    dispatch_args = dispatch_args or DispatchArgs()
    kind = overrides.pop("dispatch", None)
    two_stage = overrides.pop("two_stage", False)
    dsd, meta_column, meta_names, offline = method_data(prepared, meta_source, dispatch_k, train_cfg.seed)
    num_meta = dispatch_k if kind else len(meta_names)
    model = build_model(model_cfg, {"num_meta": num_meta, "router_seed": train_cfg.seed, **overrides}, prepared.vectors)
    vocab_map = None
    if kind or two_stage:
        column = list(dsd["train"]["premise_ids"])
        if dispatch_args.resolved(kind or "two-stage")["input"] == "pair":
            column += list(dsd["train"]["hypothesis_ids"])
        vocab_map = compact_vocabulary(column, prepared.vectors.weight.shape[0])
    if kind:
        model.attach_dispatcher(dispatch_args.build(kind, model, dispatch_k, vocab_map, train_cfg.seed))
    if offline is not None:  # the clusters' centroids become the model's meta source
        model.attach_centroids(offline.to_meta_source(**offline_input(prepared)))
    describe_model(model, prepared, meta_column, meta_names, kind)
    out = Path(output_dir) if output_dir is not None else None
    pad = prepared.vectors.pad_id
    tok = prepared.vectors.tokenizer
    result = _fit(model, dsd, meta_column, meta_names, pad, train_cfg, out, accelerator, two_stage, dispatch_args, vocab_map,
                  tok)
    result["summary"] = summarize(method, result)
    if finetune is not None:
        if offline is None and not kind and finetune.meta_names[: len(meta_names)] != meta_names:
            raise ValueError("fine-tuning data numbers its meta classes differently: call align_meta first")
        warm = None
        if two_stage:
            warm = model.detach_dispatcher()
            if not dispatch_args.dispatch_warm_start:
                warm = None
            if offline is not None:  # stage 1 of the fine-tuning routes on the clusters again
                model.attach_centroids(offline.to_meta_source(**offline_input(finetune)))
        # offline clusters: the centroids fitted on the first data set assign the new rows
        ft_data, ft_column, ft_names, _ = method_data(finetune, meta_source, dispatch_k, train_cfg.seed, offline)
        cfg = replace(train_cfg, epochs=finetune_epochs)
        sub = out / "finetune" if out else None
        describe_model(model, finetune, ft_column, ft_names, kind)
        ft = _fit(model, ft_data, ft_column, ft_names, pad, cfg, sub, accelerator, two_stage, dispatch_args, vocab_map, tok,
                  dispatcher=warm)
        ft["summary"] = summarize(method, ft)
        result["finetune"] = ft
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text results table of run summaries.

    ``disp H``: entropy (bits) of a learned dispatcher's choices on the test set; ``w/ meta``: a
    two-stage method's test accuracy with the meta labels (before its dispatcher replaced them).
    """
    cols = [
        ("val acc", "validation_accuracy", "9.3f"),
        ("test acc", "test_accuracy", "10.3f"),
        ("entropy", "routing_entropy", "9.2f"),
        ("disp H", "dispatch_entropy", "8.2f"),
        ("w/ meta", "test_accuracy_with_meta", "9.3f"),
        ("best ep", "best_epoch", "9d"),
        ("train s", "train_seconds", "9.1f"),
    ]

    def fmt(v: Any, spec: str) -> str:
        width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)

    width = max([22] + [len(r["method"]) + 2 for r in rows])
    head = f"{'method':<{width}}" + "".join(f"{name:>{int(''.join(c for c in spec.split('.')[0] if c.isdigit()))}}"
                                              for name, _, spec in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<{width}}" + "".join(fmt(r.get(key), spec) for _, key, spec in cols))
    lines.append("entropy: the first routed layer's selection entropy on test (bits); disp H: entropy of a learned dispatcher's "
                 "choices on test (bits); w/ meta: a two-stage method's test accuracy with the meta labels instead "
                 "of its dispatcher; -: does not apply")
    return "\n".join(lines)


def write_dispatch_report(result: dict, out: Path) -> None:
    """``dispatch_report.json`` + ``.png``: dispatch entropy and choices per signature on the test set."""
    parts = {"": result, "nested_": result.get("finetune")}
    for prefix, res in parts.items():
        if res is None:
            continue
        split = "test" if "test" in res["final"] else "validation"
        stats = res["final"][split].get("dispatch")
        if stats is None:
            continue
        report = {"split": split, "accuracy": res["final"][split]["accuracy"], **stats}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{prefix}dispatch_report.json").write_text(json.dumps(report, indent=2))
        plot_dispatch_distribution(stats, out / f"{prefix}dispatch_report.png",
                                   title=f"{res['summary']['method']}: dispatch per signature ({split})")
