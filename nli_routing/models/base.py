"""The base of every routed model: a Hugging Face model with its routed layers by name, their routers,
and the routing objective.

A model kind (CBOW/NLI, LSTM, Transformer, vision) builds its encoder and head, then declares its
routed layers with :meth:`RoutedModel.register_routed` (names in routing records, logs and errors). The
training loop, evaluation and numerics read the routed parts only through this interface:

- ``named_routed_layers()`` / ``routed_layers`` / ``routed_layer_names``: the layers in forward order
  (a routed layer with a ``router`` and ``num_actions``; the trajectories of ``forward`` are in this order);
- ``routers()``, ``router_parameters()`` (routers and a learned dispatcher's agent), ``block_parameters()``;
- ``set_epoch(epoch)``: the exploration schedules;
- ``router_loss(out, labels)``: the final reward of every sample (``config.reward``), the collaboration
  reward of each layer, and the sum of the router losses (plus the dispatcher's);
- an optional learned ``dispatcher`` (:meth:`attach_dispatcher`, :meth:`freeze_routing`).

Every kind is a :class:`transformers.PreTrainedModel` with a :class:`RoutedModelConfig` (a
``PretrainedConfig`` holding the kind's settings dataclass field by field): ``save_pretrained`` writes
``config.json`` and ``model.safetensors`` (router tables as parameters/buffers, the routers' epochs and
generators as ``uint8`` tensors: no pickle anywhere), ``from_pretrained`` (a folder or a Hub id) and
``AutoModel.from_pretrained`` rebuild it exactly (:mod:`nli_routing.models.auto` registers the kinds).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..routing import CollaborationReward, assign_rewards, final_reward
from ..serialization import CheckpointError, load_safetensors

__all__ = ["RoutedModel", "RoutedModelConfig", "WEIGHTS_FILE", "LEGACY_WEIGHTS_FILE", "INFERENCE_FIELDS",
           "DISPATCHER_BUILDERS", "register_dispatcher"]

#: what a saved model needs at inference besides its weights, kept in config.json by every kind
#: (:meth:`RoutedModel.describe`): the meta classes it routes on and their names, the data's own meta
#: column (reports by signature of a cluster-routed run), the tokens kept per text (``input_max_length``;
#: not ``max_length``, which transformers reserves for generation), the
#: word-vector source, an offline dispatcher's centroids and a learned dispatcher's settings
INFERENCE_FIELDS: dict[str, Any] = {
    "meta_names": None,
    "meta_column": None,
    "data_meta_column": None,
    "data_meta_names": None,
    "input_max_length": None,
    "embeddings": None,
    "offline_dispatch": None,
    "learned_dispatch": None,
}

#: learned-dispatcher kinds a saved model can rebuild (``config.learned_dispatch["builder"]``):
#: name -> ``builder(model, settings) -> dispatcher`` (registered by :mod:`nli_routing.dispatch.learned`)
DISPATCHER_BUILDERS: dict[str, Callable[[Any, dict], nn.Module]] = {}


def register_dispatcher(name: str) -> Callable[[Callable], Callable]:
    """Register a builder that rebuilds a saved model's learned dispatcher from its settings."""

    def wrap(builder: Callable) -> Callable:
        DISPATCHER_BUILDERS[name] = builder
        return builder

    return wrap

WEIGHTS_FILE = "model.safetensors"
#: what run folders of older versions hold (a torch pickle, read only weights-only by the converter)
LEGACY_WEIGHTS_FILE = "model.pt"


class RoutedModelConfig(PretrainedConfig):
    """A ``PretrainedConfig`` whose fields are those of a settings dataclass (``settings_class``: the
    model kind's ``NLIModelConfig`` / ``LSTMModelConfig`` / ``VisionMTLConfig`` / ``TransformerNLIConfig``),
    stored flat (``config.route``, ``config.num_meta``, ... as in ``config.json``) and validated by the
    dataclass; ``settings`` rebuilds the dataclass. Subclasses set ``model_type`` and ``settings_class``
    and may add fields of their own (``extra_fields``: name -> default).
    """

    model_type = "nli-routing"
    #: outputs transformers.Trainer leaves out of its predictions (only the logits are stacked)
    keys_to_ignore_at_inference = ["per_sample_loss", "trajectories", "dispatch"]
    settings_class: ClassVar[type] = None  # type: ignore[assignment]
    extra_fields: ClassVar[dict[str, Any]] = {}
    #: what a config.json without the field means: folders saved before the field existed were trained
    #: without it (issue 29's capacity balance), so they load and predict as they were saved
    absent_means: ClassVar[dict[str, Any]] = {"router_balance_share": 1.0}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # transformers 5 turns config subclasses into dataclasses whose generated __init__ would replace
        # this one unless the subclass defines __init__ itself: give every subclass this __init__
        if "__init__" not in cls.__dict__:
            cls.__init__ = RoutedModelConfig.__init__
        super().__init_subclass__(**kwargs)

    def __init__(self, **kwargs: Any) -> None:
        names = [f.name for f in dataclasses.fields(self.settings_class)]
        values = {k: kwargs.pop(k) for k in names if k in kwargs}
        values.update({k: v for k, v in self.absent_means.items() if k in names and k not in values})
        settings = self.settings_class(**values)  # validates; fills the defaults
        extra = {name: kwargs.pop(name, default) for name, default in {**INFERENCE_FIELDS, **self.extra_fields}.items()}
        super().__init__(**kwargs)  # (transformers' config resets what is set before it)
        for name in names:
            setattr(self, name, getattr(settings, name))
        for name, value in extra.items():
            setattr(self, name, value)

    @classmethod
    def from_settings(cls, settings: Any, **extra: Any) -> "RoutedModelConfig":
        """The config of a settings dataclass instance (plus ``extra_fields`` values)."""
        if not isinstance(settings, cls.settings_class):
            raise TypeError(f"{cls.__name__} holds a {cls.settings_class.__name__}, got {type(settings).__name__}")
        return cls(**dataclasses.asdict(settings), **extra)

    @property
    def settings(self) -> Any:
        """The settings dataclass of these fields (validated again: a field set to a bad value fails here)."""
        return self.settings_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.settings_class)})

    def router_kwargs(self, seed_offset: int = 0) -> dict[str, Any]:
        return self.settings.router_kwargs(seed_offset)


class RoutedModel(PreTrainedModel):
    """Routed layers by name, their routers and rewards, and an optional learned dispatcher.

    ``config``: the kind's :class:`RoutedModelConfig` or its settings dataclass (wrapped); it needs
    ``num_meta`` (meta classes), ``reward`` (final reward kind) and ``rho`` (collaboration reward
    weight), as every routed model config has. Subclasses set ``config_class``.
    """

    config_class = RoutedModelConfig
    base_model_prefix = ""
    main_input_name = "input_ids"

    def __init__(self, config: Any) -> None:
        if not isinstance(config, PretrainedConfig):
            config = self.config_class.from_settings(config)
        super().__init__(config)
        self._routed: list[tuple[str, nn.Module]] = []  # registered through their parents (no second key)
        self.routing_frozen = False  # stage 2 of two-stage dispatch: only the dispatcher learns
        self._unfrozen: list[nn.Parameter] = []

    # ------------------------------------------------------------------ routed layers
    def register_routed(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        """Declare the routed layers (``(name, layer)`` in forward order; names must be unique; none for an
        unrouted model) and build each one's collaboration reward. Every model kind calls it once, after
        building its parts."""
        names = [name for name, _ in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"routed layer names must be unique, got {names}")
        self._routed = list(layers)
        self.collaboration = nn.ModuleList(
            CollaborationReward(layer.num_actions, self.config.rho, depths=layer.block_sets) for _, layer in layers
        )

    def named_routed_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self._routed)

    @property
    def routed_layers(self) -> list[nn.Module]:
        return [layer for _, layer in self._routed]

    @property
    def routed_layer_names(self) -> list[str]:
        return [name for name, _ in self._routed]

    def routers(self) -> list[nn.Module]:
        return [layer.router for _, layer in self._routed]

    def router_parameters(self) -> list[nn.Parameter]:
        params = [p for r in self.routers() for p in r.parameters()]
        if self.dispatcher is not None:
            params += self.dispatcher.router_parameters()
        return params

    def block_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    def set_epoch(self, epoch: int) -> None:
        for r in self.routers():
            r.set_epoch(epoch)
        if self.dispatcher is not None:
            self.dispatcher.set_epoch(epoch)

    # ------------------------------------------------------------------ the routing objective
    def router_loss(self, out: Any, labels: Tensor) -> Tensor:
        """Assign rewards to every trajectory of ``out`` (an output with ``logits``, ``per_sample_loss``,
        ``trajectories`` and ``dispatch``, None without a dispatcher) and return the summed router (and dispatcher) loss."""
        dispatch = out.dispatch
        if not out.trajectories and dispatch is None:
            return out.logits.new_zeros(())
        correct = out.logits.detach().argmax(-1) == labels
        reward = final_reward(self.config.reward, correct=correct, per_sample_loss=out.per_sample_loss)
        total = out.logits.new_zeros(())
        if not self.routing_frozen:
            for (_, layer), collab, traj in zip(self._routed, self.collaboration, out.trajectories):
                assign_rewards(traj, reward, collab)
                total = total + layer.router.loss(traj)
        if dispatch is not None and self.dispatcher.training:
            total = total + self.dispatcher.loss(dispatch, reward)
        return total

    # ------------------------------------------------------------------ learned dispatcher
    @property
    def dispatcher(self) -> nn.Module | None:
        """The learned dispatcher choosing each sample's meta class (see :meth:`attach_dispatcher`)."""
        return self._modules.get("dispatcher")

    def attach_dispatcher(self, dispatcher: nn.Module) -> None:
        """Route with the meta class a learned dispatcher picks from the tokens (the batch's meta
        labels are then never read by the model; they stay in the batch for per-class reports).

        The dispatcher's number of classes must equal the routers' number of meta classes.
        """
        if dispatcher.num_dispatch != self.config.num_meta:
            raise ValueError(
                f"the dispatcher chooses among {dispatcher.num_dispatch} classes but the model's routers "
                f"have {self.config.num_meta} meta classes"
            )
        self._modules["dispatcher"] = dispatcher  # a registered submodule (saved, moved, trained)
        self.config.learned_dispatch = dispatcher.to_config()  # so from_pretrained rebuilds it

    def freeze_routing(self) -> None:
        """Fix every parameter and router outside the dispatcher (stage 2 of two-stage dispatch).

        The frozen parts stay in eval mode (greedy routers, no dropout) even under ``model.train()``
        and their router losses are not computed; only the dispatcher trains.
        """
        if self.dispatcher is None:
            raise ValueError("attach a dispatcher before freezing the routing (nothing would learn)")
        keep = {id(p) for p in self.dispatcher.parameters()}
        self._unfrozen = [p for p in self.parameters() if id(p) not in keep and p.requires_grad]
        for p in self._unfrozen:
            p.requires_grad_(False)
        self.routing_frozen = True
        self.train(self.training)

    def detach_dispatcher(self) -> nn.Module | None:
        """Remove the dispatcher (routing reads the batch's meta labels again) and undo
        :meth:`freeze_routing`; returns the removed dispatcher."""
        dispatcher = self._modules.pop("dispatcher", None)
        self.config.learned_dispatch = None
        for p in self._unfrozen:
            p.requires_grad_(True)
        self._unfrozen = []
        self.routing_frozen = False
        self.train(self.training)
        return dispatcher

    def train(self, mode: bool = True) -> "RoutedModel":
        super().train(mode)
        if self.routing_frozen:
            for child in self.children():
                if child is not self.dispatcher:
                    child.train(False)
        return self

    # ------------------------------------------------------------------ what inference needs
    def describe(
        self,
        label_names: Sequence[str] | None = None,
        meta_names: Sequence[str] | None = None,
        meta_column: str | None = None,
        data_meta_column: str | None = None,
        data_meta_names: Sequence[str] | None = None,
        input_max_length: int | None = None,
        embeddings: str | None = None,
        offline_dispatch: dict | None = None,
    ) -> None:
        """Record in the config what inference needs besides the weights (see :data:`INFERENCE_FIELDS`):
        ``label_names`` become ``id2label`` / ``label2id``; ``meta_names`` name the routers' meta classes
        (signatures, genres, ``cluster_<i>``), ``meta_column`` the column routed on, ``data_meta_column``
        the data's own meta column; ``offline_dispatch``: an offline dispatcher's state (centroids) plus
        the ``text_column`` and ``max_length`` it encodes."""
        c = self.config
        if label_names is not None:
            c.id2label = {i: str(n) for i, n in enumerate(label_names)}
            c.label2id = {str(n): i for i, n in enumerate(label_names)}
        if meta_names is not None:
            meta_names = [str(n) for n in meta_names]
            if self.dispatcher is None and len(meta_names) != int(c.num_meta):
                raise ValueError(f"{len(meta_names)} meta names for a model with {c.num_meta} meta classes")
            c.meta_names = meta_names
        if data_meta_names is not None:
            c.data_meta_names = [str(n) for n in data_meta_names]
        for name, value in (("meta_column", meta_column), ("data_meta_column", data_meta_column),
                            ("input_max_length", input_max_length), ("embeddings", embeddings),
                            ("offline_dispatch", offline_dispatch)):
            if value is not None:
                setattr(c, name, value)

    @property
    def needs_meta(self) -> bool:
        """Whether the forward reads meta labels (routed layers or a meta keyword, no learned dispatcher)."""
        if self.dispatcher is not None:
            return False
        return bool(self._routed) or self.reads_meta_keyword

    #: the forward adds a learned vector of the meta label (kinds with a ``meta_keyword`` setting override)
    reads_meta_keyword = False

    # ------------------------------------------------------------------ Hugging Face model plumbing
    def _init_weights(self, module: nn.Module) -> None:
        """Every part initialises itself when built (and a pretrained backbone is already trained):
        ``post_init`` must not re-initialise anything."""

    @property
    def settings(self) -> Any:
        """The settings dataclass of ``config``."""
        return self.config.settings

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        tokenizer: Any = None,
        state_dict: dict[str, Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (every entry of the state dict is a tensor:
        weights, router tables, the routers' epochs and generators), and ``tokenizer`` when given.

        ``push_to_hub=True`` uploads the folder (``repo_id``, ``token``, ``commit_message``, ``private``
        as for transformers' models); other keyword arguments of transformers' ``save_pretrained``
        (``safe_serialization``, ``max_shard_size``, ...) are accepted and ignored: the file is one
        safetensors file.
        """
        from safetensors.torch import save_file

        out = Path(save_directory)
        if out.is_file():
            raise ValueError(f"save_pretrained needs a folder, {out} is a file")
        repo_id = kwargs.pop("repo_id", None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("token", "commit_message", "private", "create_pr") if k in kwargs}
        out.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(out)
        state = self.state_dict() if state_dict is None else state_dict
        tensors: dict[str, Tensor] = {}
        seen: set[tuple] = set()
        for key, value in state.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"state entry {key!r} is a {type(value).__name__}, not a tensor: it cannot be saved")
            value = value.detach().cpu().contiguous()
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            tensors[key] = value.clone() if ptr in seen else value  # safetensors refuses shared storage
            seen.add(ptr)
        tmp = out / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(out / WEIGHTS_FILE)  # never leave a half-written file under the real name
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=hub_kwargs.get("token"))
            repo = repo_id or out.name
            api.create_repo(repo, exist_ok=True, private=hub_kwargs.get("private"))
            api.upload_folder(repo_id=repo, folder_path=str(out), commit_message=hub_kwargs.get("commit_message"),
                              create_pr=hub_kwargs.get("create_pr", False))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: RoutedModelConfig | None = None,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> "RoutedModel":
        """Rebuild a model written by :meth:`save_pretrained` from a folder or a Hub repository id
        (downloaded with ``huggingface_hub``): same weights, router tables, epochs and generators, so
        the same logits and routes. A run folder of an older version (``model.pt``) is refused with the
        command that converts it (``nli-routing convert``); nothing is ever unpickled."""
        src = resolve_model_folder(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only, token=token)
        legacy = cls._legacy_folder(src)
        if legacy is not None:
            return legacy
        if config is None:
            config = load_model_config(src)
        if not isinstance(config, cls.config_class):
            raise CheckpointError(
                f"{src / 'config.json'} describes a {type(config).__name__} (model_type "
                f"{getattr(config, 'model_type', None)!r}), not a {cls.__name__}: load it with "
                "transformers.AutoModel.from_pretrained or the matching class"
            )
        model = cls._build_for_load(config, src)
        spec = config.learned_dispatch
        if spec:
            builder = DISPATCHER_BUILDERS.get(spec.get("builder"))
            if builder is None:
                raise CheckpointError(
                    f"{src / 'config.json'}: learned dispatcher {spec.get('builder')!r} is not registered "
                    f"(known: {sorted(DISPATCHER_BUILDERS)}); import nli_routing.dispatch.learned first"
                )
            model.attach_dispatcher(builder(model, spec))
        model.load_state_dict(read_weights(src, map_location), strict=True)
        model.name_or_path = str(pretrained_model_name_or_path)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        model.eval()
        return model

    @classmethod
    def _build_for_load(cls, config: RoutedModelConfig, folder: Path) -> "RoutedModel":
        """An instance of the right shapes whose weights :meth:`from_pretrained` then loads."""
        return cls(config)

    @classmethod
    def _legacy_folder(cls, folder: Path) -> "RoutedModel | None":
        """A model read from an older folder layout, or None (the current layout)."""
        if not (folder / "config.json").exists() and (folder / LEGACY_WEIGHTS_FILE).exists():
            raise CheckpointError(
                f"{folder} holds a {LEGACY_WEIGHTS_FILE} of an older nli_routing (a torch pickle, not loaded by "
                f"from_pretrained): convert it with `nli-routing convert {folder} OUT_DIR`, then load OUT_DIR"
            )
        return None


def resolve_model_folder(name_or_path: str | Path, **hub: Any) -> Path:
    """A local folder as is; anything else is a Hub repository id, downloaded (``snapshot_download``)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file: a saved model is a folder (config.json + {WEIGHTS_FILE})")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), **{k: v for k, v in hub.items() if v is not None}))
    except Exception as err:
        raise OSError(f"{name_or_path} is neither a local folder nor a Hub model that can be downloaded: "
                      f"{(str(err).splitlines() or [type(err).__name__])[0]}") from None


def load_model_config(folder: Path) -> RoutedModelConfig:
    """The config of a saved model folder (its ``model_type`` picks the class)."""
    from transformers import AutoConfig

    from . import auto  # noqa: F401  (registers the model types)

    file = folder / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved model folder")
    try:
        json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is truncated or not JSON: {err}") from None
    return AutoConfig.from_pretrained(str(folder))


def read_weights(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of ``folder/model.safetensors``; a damaged file raises :class:`CheckpointError` naming it."""
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    return load_safetensors(weights, map_location)
