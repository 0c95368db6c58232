"""Saved models as Hugging Face folders: older run folders (model.pt) refused with the conversion
command and converted by ``nli-routing convert`` (weights-only), damaged files named, wrong classes
refused, and no pickle in any saved model or checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from nli_routing.cli import main as cli
from nli_routing.models.nli import NLIRoutingConfig, NLIRoutingModel
from nli_routing.models.vision import VisionMTLModel
from nli_routing.serialization import CheckpointError

from .helpers import build_model


def write_old_run_folder(model, folder):
    """A run folder as versions before save_pretrained wrote it: model_config.json + model.pt, the
    routers' extra state as {"epoch", "generator"} dicts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.json").write_text(json.dumps(model.settings.to_dict()))
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_extra_state"):
            router = model.get_submodule(key.rsplit(".", 1)[0])
            value = {"epoch": router.epoch, "generator": router.generator.get_state()}
        state[key] = value
    torch.save(state, folder / "model.pt")


@pytest.mark.parametrize("kind,part", [("cbow", "wp+classifier"), ("lstm", "h2h"), ("vision", "routing")])
def test_an_old_run_folder_is_refused_with_the_command_and_converts(kind, part, tmp_path, capsys):
    model, batch = build_model(kind, part)
    model.set_epoch(2)
    write_old_run_folder(model, tmp_path / "old")
    with pytest.raises(CheckpointError, match=r"nli-routing convert .*old OUT_DIR"):
        type(model).from_pretrained(tmp_path / "old")
    cli(["convert", str(tmp_path / "old"), str(tmp_path / "new")])
    assert "written to" in capsys.readouterr().out
    loaded = AutoModel.from_pretrained(tmp_path / "new")
    model.eval()
    out, again = model(**batch), loaded(**batch)
    assert torch.equal(out.logits, again.logits) and loaded.routers()[0].epoch == 2
    assert all(torch.equal(a.actions, b.actions) for a, b in zip(out.trajectories, again.trajectories))


def test_convert_refuses_bad_folders_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["convert", str(tmp_path / "missing"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "model_config.json does not exist" in err and len(err.strip().splitlines()) == 1
    model, _ = build_model("cbow", "wp")
    write_old_run_folder(model, tmp_path / "old")
    with pytest.raises(SystemExit):
        cli(["convert", str(tmp_path / "old"), str(tmp_path / "out"), "--pad_id", "50"])
    assert "--pad_id 50 is outside the vocabulary" in capsys.readouterr().err
    (tmp_path / "old" / "model.pt").write_bytes((tmp_path / "old" / "model.pt").read_bytes()[:100])
    with pytest.raises(SystemExit):
        cli(["convert", str(tmp_path / "old"), str(tmp_path / "out")])
    assert "model.pt is truncated" in capsys.readouterr().err
    (tmp_path / "old" / "model_config.json").write_text('{"route": "wp", "no_such_field": 1}')
    with pytest.raises(SystemExit):
        cli(["convert", str(tmp_path / "old"), str(tmp_path / "out")])
    assert "model_config.json" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_damaged_or_foreign_model_folders_are_named(tmp_path):
    model, _ = build_model("cbow", "wp")
    model.save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == NLIRoutingConfig.model_type
    with pytest.raises(CheckpointError, match="describes a NLIRoutingConfig.*not a VisionMTLModel"):
        VisionMTLModel.from_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated or not a safetensors file"):
        NLIRoutingModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json is truncated or not JSON"):
        NLIRoutingModel.from_pretrained(tmp_path / "m")
    with pytest.raises(OSError, match="neither a local folder nor a Hub model"):
        NLIRoutingModel.from_pretrained(str(tmp_path / "nowhere"), local_files_only=True)


def test_a_state_dict_holds_only_tensors_and_the_router_state_round_trips():
    model, batch = build_model("cbow", "wp")
    model.set_epoch(3)
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other, _ = build_model("cbow", "wp")
    other.load_state_dict(state)
    assert other.routers()[0].epoch == 3
    assert torch.equal(other.routers()[0].generator.get_state(), model.routers()[0].generator.get_state())
    with pytest.raises(ValueError, match="extra state must be the uint8 tensor"):
        other.routers()[0].set_extra_state(torch.zeros(3))


def test_push_to_hub_uploads_the_run_folder_in_the_hubs_layout(tmp_path, monkeypatch):
    """Offline: the Hub client is replaced by a recorder; the folder it would upload is complete."""
    import huggingface_hub

    from nli_routing.experiments.nli import DataArgs, prepare_sci, run_method
    from nli_routing.models.nli import NLIModelConfig
    from nli_routing.training.loop import TrainConfig

    calls = []

    def upload_folder(self, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the recorder stands in for the Hub
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0, push_to_hub=True, hub_model_id="me/sci")
    run_method("wp-signature", prepare_sci(DataArgs(max_train_samples=60, allow_unseen_meta=True)),
               NLIModelConfig(classifier_hidden=8), cfg, 3, tmp_path / "wp-signature")
    assert calls[0] == ("create", "me/sci-wp-signature")
    kind, repo, files = calls[1]
    assert kind == "upload" and repo == "me/sci-wp-signature"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    with pytest.raises(ValueError, match="--hub_model_id needs --push_to_hub"):
        TrainConfig(hub_model_id="me/sci")
