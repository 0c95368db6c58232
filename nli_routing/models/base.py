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
- the meta source (:mod:`.meta`): ``meta_source`` is ``"given"`` (the caller's labels), ``"centroids"``
  (:meth:`attach_centroids`: offline clusters, nearest centroid computed in ``forward``) or ``"learned"``
  (:meth:`attach_dispatcher`, :meth:`freeze_routing`), or ``"none"`` for a model that reads no meta.

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
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..routing import CollaborationReward, final_reward
from ..routing.config import revalidating
from ..routing.objective import routing_objective
from ..serialization import CheckpointError, load_safetensors
from .dispatcher import LearnedDispatcher
from .meta import NearestCentroid

__all__ = ["MODEL_KINDS", "ModelKind", "RoutedModel", "RoutedModelConfig", "WEIGHTS_FILE", "LEGACY_WEIGHTS_FILE",
           "INFERENCE_FIELDS", "register_model_kind"]

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
    "weights_sha256": None,
}

#: the module a saved folder carries for ``trust_remote_code=True`` (transformers' Auto classes load the
#: config and model classes named in ``config.auto_map`` from it): it imports them from the installed package
REMOTE_CODE_MODULE = "modeling_nli_routing"
REMOTE_CODE = '''"""The classes of this routed model for transformers' Auto classes:

    AutoModel.from_pretrained(folder_or_hub_id, trust_remote_code=True)

They are those of the installed nli_routing package (pip install nli_routing, or pip install -e . in its
checkout); this file only names them. Without trust_remote_code, import nli_routing.models first.
"""

from nli_routing.models.auto import MODEL_KINDS

for _kind in MODEL_KINDS.values():
    globals()[_kind.config_class.__name__] = _kind.config_class
    globals()[_kind.model_class.__name__] = _kind.model_class
'''

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
    keys_to_ignore_at_inference = ["per_sample_loss", "trajectories", "dispatch", "meta", "meta_source", "reward_loss"]
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
        labels_given = "id2label" in kwargs or "num_labels" in kwargs
        super().__init__(**kwargs)  # (transformers' config resets what is set before it)
        classes = getattr(settings, "num_classes", None)
        if not labels_given and classes:  # not transformers' two-label default for a three-class model
            self.num_labels = int(classes)
        for name in names:
            setattr(self, name, getattr(settings, name))
        for name, value in extra.items():
            setattr(self, name, value)

    @classmethod
    def from_settings(cls, settings: Any, **extra: Any) -> "RoutedModelConfig":
        """The config of a settings dataclass instance (plus ``extra_fields`` values)."""
        if not isinstance(settings, cls.settings_class):
            raise TypeError(f"{cls.__name__} holds a {cls.settings_class.__name__}, got {type(settings).__name__}")
        with revalidating():  # the settings instance was validated (and warned about) when it was built
            return cls(**dataclasses.asdict(settings), **extra)

    @property
    def settings(self) -> Any:
        """The settings dataclass of these fields (validated again: a field set to a bad value fails here; the
        collapse warning was given when the config was built)."""
        with revalidating():
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
        #: compute the router losses of layers that can share one computation as one (routing_objective);
        #: False: one loss per layer (the reference; same values and gradients)
        self.fuse_routing_objective = True
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
        reward_loss = getattr(out, "reward_loss", None)  # the path the trajectories took, where it differs
        reward = final_reward(self.config.reward, correct=correct,
                              per_sample_loss=out.per_sample_loss if reward_loss is None else reward_loss)
        total = None
        if not self.routing_frozen and out.trajectories:
            parts = [(layer.router, collab, traj)
                     for (_, layer), collab, traj in zip(self._routed, self.collaboration, out.trajectories)]
            total = routing_objective(parts, reward, fuse=self.fuse_routing_objective)
        if dispatch is not None and self.dispatcher.training:
            loss = self.dispatcher.loss(dispatch, reward)
            total = loss if total is None else total + loss
        return out.logits.new_zeros(()) if total is None else total

    # ------------------------------------------------------------------ the meta source
    @property
    def dispatcher(self) -> nn.Module | None:
        """The learned dispatcher choosing each sample's meta class (see :meth:`attach_dispatcher`)."""
        return self._modules.get("dispatcher")

    @property
    def centroids(self) -> NearestCentroid | None:
        """The offline clusters' nearest-centroid source (see :meth:`attach_centroids`), or None."""
        return self._modules.get("centroid_dispatch")

    @property
    def meta_source(self) -> str:
        """Where the meta classes of ``forward`` come from: ``"learned"``, ``"centroids"``, ``"given"`` (the
        caller's ``meta``) or ``"none"`` (the model reads no meta); see :mod:`nli_routing.models.meta`."""
        if self.dispatcher is not None:
            return "learned"
        if self.centroids is not None:
            return "centroids"
        return "given" if bool(self._routed) or self.reads_meta_keyword else "none"

    def attach_centroids(self, source: NearestCentroid) -> None:
        """Route with the nearest of an offline clustering's centroids, computed in ``forward`` from the
        premise tokens and the model's word vectors (the caller's meta labels are then not read; they
        may stay in the batch for per-class reports). The centroids are saved in ``model.safetensors``."""
        if self.dispatcher is not None:
            raise ValueError("the model already has a learned dispatcher: one meta source at a time")
        if source.num_dispatch != int(self.config.num_meta):
            raise ValueError(f"{source.num_dispatch} centroids for a model with {self.config.num_meta} meta classes")
        dim = getattr(self.config, "embedding_dim", None)
        if dim is not None and int(source.centroids.shape[1]) != int(dim):
            raise ValueError(f"centroids of dimension {source.centroids.shape[1]} for word vectors of dimension {dim}")
        self._modules["centroid_dispatch"] = source
        self.config.offline_dispatch = source.settings

    def attach_dispatcher(self, dispatcher: nn.Module) -> None:
        """Route with the meta class a learned dispatcher picks from the tokens (the batch's meta
        labels are then never read by the model; they stay in the batch for per-class reports). It
        replaces offline centroids (two-stage dispatch on clusters).

        The dispatcher's number of classes must equal the routers' number of meta classes.
        """
        if dispatcher.num_dispatch != self.config.num_meta:
            raise ValueError(
                f"the dispatcher chooses among {dispatcher.num_dispatch} classes but the model's routers "
                f"have {self.config.num_meta} meta classes"
            )
        if self.centroids is not None:  # two-stage dispatch after routing on clusters: the dispatcher replaces them
            self._modules.pop("centroid_dispatch")
            self.config.offline_dispatch = None
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
        """Whether the forward reads the caller's meta labels (``meta_source == "given"``)."""
        return self.meta_source == "given"

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
        # transformers' convention for custom models: AutoModel.from_pretrained(folder, trust_remote_code=True)
        # loads the classes named here from the folder's module, which imports the installed nli_routing
        self.config.auto_map = {"AutoConfig": f"{REMOTE_CODE_MODULE}.{type(self.config).__name__}",
                                "AutoModel": f"{REMOTE_CODE_MODULE}.{type(self).__name__}"}
        (out / f"{REMOTE_CODE_MODULE}.py").write_text(REMOTE_CODE)
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
        # config.json records the weights' checksum: a damaged or swapped model.safetensors is refused on load
        self.config.weights_sha256 = file_sha256(tmp)
        self.config.save_pretrained(out)
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
        verify_weights: bool = True,
        **kwargs: Any,
    ) -> "RoutedModel":
        """Rebuild a model written by :meth:`save_pretrained` from a folder or a Hub repository id
        (downloaded with ``huggingface_hub``): same weights, router tables, epochs and generators, so
        the same logits and routes. A run folder of an older version (``model.pt``) is refused with the
        command that converts it (``nli-routing convert``); nothing is ever unpickled. ``model.safetensors``
        must match the SHA-256 that ``config.json`` records (``verify_weights=False``: load it anyway; folders
        saved before the checksum existed have none and load as they are)."""
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
        weights = read_weights(src, map_location)  # (a file that does not parse is named as such first)
        if verify_weights:
            check_weights(src, getattr(config, "weights_sha256", None))
        model._attach_saved_meta_source(config, weights, src)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as err:  # sizes or names of config.json and model.safetensors disagree
            detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
            raise CheckpointError(f"{src}: config.json and {WEIGHTS_FILE} do not describe the same model: {detail}") from None
        model.name_or_path = str(pretrained_model_name_or_path)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        model.eval()
        return model

    def _attach_saved_meta_source(self, config: RoutedModelConfig, weights: dict[str, Tensor], folder: Path) -> None:
        """Rebuild the meta source a saved config names (before its weights load). Folders saved before
        the centroids became tensors hold them in ``config.offline_dispatch``: they are moved into
        ``weights``."""
        spec = config.learned_dispatch
        if spec:
            if spec.get("builder", "learned") != "learned":
                raise CheckpointError(f"{folder / 'config.json'}: unknown learned dispatcher {spec.get('builder')!r} "
                                      "(this version knows 'learned')")
            self.attach_dispatcher(LearnedDispatcher.from_config(self.encoder.embedding, spec))
        offline = config.offline_dispatch
        if offline and not spec:  # (older two-stage folders kept both; the dispatcher is what routed)
            try:
                source = NearestCentroid.from_settings({"dim": getattr(config, "embedding_dim", None), **offline})
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{folder / 'config.json'}: offline_dispatch is not a centroid source: {err}") from None
            self.attach_centroids(source)
            key = "centroid_dispatch.centroids"
            if key not in weights and offline.get("centroids") is not None:
                weights[key] = source.centroids.clone()

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


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A registered model kind: its settings dataclass (the one config a user writes, parsed from the
    command line by the recipes), its Hugging Face config class (made by :func:`register_model_kind`)
    and its model class."""

    name: str
    settings_class: type
    config_class: type[RoutedModelConfig]
    model_class: type[RoutedModel]


#: every model kind by name ("cbow", "lstm", "transformer", "vision"), in registration order
MODEL_KINDS: dict[str, ModelKind] = {}


def register_model_kind(
    name: str,
    settings_class: type,
    model_class: type[RoutedModel],
    model_type: str,
    config_name: str,
    extra_fields: dict[str, Any] | None = None,
    parent: type[RoutedModelConfig] = RoutedModelConfig,
) -> type[RoutedModelConfig]:
    """Register a model kind in one call, next to it (the shape of PEFT's ``register_peft_method``):
    build its Hugging Face config class ``config_name`` (the fields of ``settings_class`` plus
    ``extra_fields``, ``model_type`` in ``config.json``), make it ``model_class.config_class`` and register
    both with transformers' ``AutoConfig`` / ``AutoModel``. Returns the config class."""
    from transformers import AutoConfig, AutoModel

    if name in MODEL_KINDS and MODEL_KINDS[name].model_class is not model_class:
        raise ValueError(f"model kind {name!r} is already registered for {MODEL_KINDS[name].model_class.__name__}")
    namespace = {
        "__doc__": f"The Hugging Face config of :class:`{model_class.__name__}`: the fields of "
                   f":class:`{settings_class.__name__}`" + (f" plus {sorted(extra_fields)}" if extra_fields else "") + ".",
        "__module__": model_class.__module__,
        "model_type": model_type,
        "settings_class": settings_class,
    }
    if extra_fields:
        namespace["extra_fields"] = {**parent.extra_fields, **extra_fields}
    config_class = type(config_name, (parent,), namespace)
    model_class.config_class = config_class
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    MODEL_KINDS[name] = ModelKind(name, settings_class, config_class, model_class)
    return config_class


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
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is truncated or not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    # (a missing or unknown model_type would otherwise end in transformers' question about trust_remote_code)
    known = sorted(kind.config_class.model_type for kind in MODEL_KINDS.values())
    if "model_type" not in raw:
        raise CheckpointError(f"{file}: field 'model_type' is missing; a routed model has one of {known}")
    if raw["model_type"] not in known:
        raise CheckpointError(f"{file}: field 'model_type' is {raw['model_type']!r}, not a routed model kind; "
                              f"known: {known}")
    return AutoConfig.from_pretrained(str(folder))


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(folder: Path, expected: str | None) -> None:
    """Refuse ``folder/model.safetensors`` when it does not have the SHA-256 ``config.json`` records."""
    weights = folder / WEIGHTS_FILE
    if expected and weights.exists():
        found = file_sha256(weights)
        if found != expected:
            raise CheckpointError(
                f"{weights}: SHA-256 {found[:12]}... does not match config.json's weights_sha256 {expected[:12]}...: "
                "the file is damaged or belongs to another model (from_pretrained(..., verify_weights=False) loads it anyway)")


def read_weights(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of ``folder/model.safetensors``; a damaged file raises :class:`CheckpointError` naming it."""
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    return load_safetensors(weights, map_location)
