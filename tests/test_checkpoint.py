"""Checkpoint formats: the official release layout, released weights by name, this project's own
safetensors format, and CLIP-only weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from safetensors.torch import save_file

import san
from pipeline.cli import flag
from san.checkpoint import convert_official_state_dict, read_official_checkpoint
from san.config import TINY_CLIP_CFG, get_preset
from san.errors import ModelConfigError
from san.official_config import read_official_config

PARITY = Path(__file__).parent / "data" / "parity"


@pytest.fixture(scope="module")
def official_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(PARITY / "checkpoint.pth", weights_only=True)["model"]


def test_key_conversion_is_a_pure_rename(official_state_dict) -> None:
    before = dict(official_state_dict)
    converted = convert_official_state_dict(official_state_dict)
    assert official_state_dict == before, "the input is not modified"
    assert "clip_features.resblocks.0.attn.in_proj_weight" in converted
    assert "clip_recognition.resblocks.1.mlp.c_fc.weight" in converted
    assert "side_adapter.vit.blocks.3.attn.qkv.weight" in converted
    assert "side_adapter.fusion_layers.layer_2.input_proj.0.weight" in converted
    assert "text_classifier.text_encoder.token_embedding.weight" in converted
    assert "text_classifier.bg_embed" in converted
    assert not any(k.startswith(("criterion.", "ov_classifier.")) for k in converted)
    for key, value in converted.items():
        assert any(value is v for v in official_state_dict.values()), key
    assert len(converted) == len(official_state_dict) - 2  # attn_mask and empty_weight dropped


def test_official_config_forms_agree() -> None:
    from_json = read_official_config(PARITY / "config.json")
    assert from_json.clip.model_cfg == TINY_CLIP_CFG
    assert from_json.side_adapter == get_preset("san_tiny").side_adapter
    assert from_json.clip_resolution == 0.5 and from_json.clip.feature_last_layer == 4
    assert read_official_config("san_vit_b_16") == get_preset("san_vit_b_16")


def test_official_yaml_with_base(tmp_path: Path) -> None:
    # The layout of the official configs/san_clip_vit_large_res4_coco.yaml and its _BASE_.
    (tmp_path / "base.yaml").write_text("MODEL:\n  META_ARCHITECTURE: SAN\nSOLVER:\n  BASE_LR: 0.0001\n")
    (tmp_path / "large.yaml").write_text(
        '_BASE_: base.yaml\nMODEL:\n  SAN:\n    CLIP_RESOLUTION: 0.7\n    CLIP_MODEL_NAME: "ViT-L-14-336"\n'
        '    FEATURE_LAST_LAYER_IDX: 18\n  SIDE_ADAPTER:\n    FUSION_MAP: ["0->0", "6->1", "12->2", "18->3"]\n'
        "    ATTN_BIAS:\n      NUM_HEADS: 16\n"
    )
    assert read_official_config(tmp_path / "large.yaml") == get_preset("san_vit_l_14")
    (tmp_path / "b16.yaml").write_text('MODEL:\n  SAN:\n    CLIP_MODEL_NAME: "ViT-B/16"\n')
    assert read_official_config(tmp_path / "b16.yaml") == get_preset("san_vit_b_16")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"MODEL.SAN": {"CLIP_RESOLUTON": 0.5}}, "unknown fields \\['CLIP_RESOLUTON'\\]"),
        ({"MODEL.SAN": {"REC_CROSS_ATTN": True}}, "REC_CROSS_ATTN=True is not supported"),
        ({"MODEL.SIDE_ADAPTER": {"VIT_NAME": "vit_base"}}, "cannot read VIT_NAME"),
        ({"MODEL.SIDE_ADAPTER": {"FUSION_MAP": ["0=>0"]}}, "FUSION_MAP entry"),
    ],
)
def test_bad_official_config(content: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        read_official_config(content)


def test_missing_config_file() -> None:
    with pytest.raises(ModelConfigError, match="does not exist"):
        read_official_config("configs/nope.yaml")


def test_checkpoint_of_another_layout(tmp_path: Path, official_state_dict) -> None:
    with pytest.raises(san.CheckpointError, match="official SAN release layout"):
        san.load_official({"state_dict": official_state_dict}, PARITY / "config.json")
    with pytest.raises(san.CheckpointError, match="official SAN prefixes"):
        san.load_official({"model": {"visual.conv1.weight": torch.zeros(1)}}, PARITY / "config.json")
    own = san.save_checkpoint(san.build_san("san_tiny"), tmp_path / "own.safetensors")
    with pytest.raises(san.CheckpointError, match="not of the official SAN release layout.*san.load_checkpoint"):
        read_official_checkpoint(own)
    (tmp_path / "other.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(san.CheckpointError, match="not a readable"):
        san.load_official(tmp_path / "other.pth", PARITY / "config.json")
    with pytest.raises(san.CheckpointError, match="not a safetensors file"):
        san.load_checkpoint(PARITY / "checkpoint.pth")


def test_mismatch_lists_missing_unexpected_and_wrong_shape_keys(official_state_dict) -> None:
    broken = dict(official_state_dict)
    del broken["side_adapter_network.query_embed"]
    broken["side_adapter_network.extra.weight"] = torch.zeros(2)
    broken["clip_rec_head.proj"] = torch.zeros(3, 3)
    with pytest.raises(san.CheckpointError) as info:
        san.load_official({"model": broken}, PARITY / "config.json")
    message = str(info.value)
    assert "missing keys (1): side_adapter.query_embed" in message
    assert "unexpected keys (1): side_adapter.extra.weight" in message
    assert "wrong shapes (1): clip_recognition.proj: checkpoint (3, 3) vs model (96, 64)" in message


class _RunsCode:
    """Unpickled, it would create the file ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _not_a_san_checkpoint(kind: str, folder: Path, official_state_dict: dict) -> Path:
    """A file ``check_model`` must refuse, of one ``kind``."""
    path = folder / ("model.safetensors" if kind == "foreign safetensors" else "model.pth")
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "malicious pickle":
        torch.save({"model": _RunsCode(folder / "ran")}, path)
    elif kind == "other layout":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "other model":
        torch.save({"model": {k: v for k, v in official_state_dict.items() if "side_adapter" not in k}}, path)
    else:
        save_file({"weight": torch.zeros(2)}, path)  # another project's safetensors: no SAN config
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "is not a readable PyTorch checkpoint (neither a zip archive nor a pickle); expected an official"),
        ("malicious pickle", "is not a readable PyTorch checkpoint (it holds Python objects, not only tensors; "),
        ("other layout", "is not of the official SAN release layout {'model': state_dict} (found ['weights'])"),
        ("other model", "does not match the model of its config: missing keys (85): side_adapter.fusion_layers"),
        ("foreign safetensors", "has no SAN config in its metadata"),
    ],
)
def test_a_file_that_is_no_san_checkpoint_is_named_in_one_line_without_loading_it(
    kind: str, message: str, tmp_path: Path, official_state_dict: dict
) -> None:
    """What the label job's driver checks before its workers start (each printed a long traceback)."""
    path = _not_a_san_checkpoint(kind, tmp_path, official_state_dict)
    with pytest.raises(san.CheckpointError) as info:
        san.checkpoint.check_model(path, PARITY / "config.json")
    assert str(info.value).startswith(f"{path} {message}") and "\n" not in str(info.value)
    assert not (tmp_path / "ran").exists(), "nothing in the file ran"


def test_a_config_that_cannot_be_read_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("MODEL:\n  SAN: [unclosed\n")
    with pytest.raises(ModelConfigError) as info:
        san.checkpoint.check_model(PARITY / "checkpoint.pth", tmp_path / "config.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}: cannot read the SAN config: ")
    assert "\n" not in str(info.value)


def test_check_model_passes_what_load_model_loads(tmp_path: Path) -> None:
    san.checkpoint.check_model(PARITY / "checkpoint.pth", PARITY / "config.json")
    own = san.save_checkpoint(san.build_san("san_tiny"), tmp_path / "own.safetensors")
    san.checkpoint.check_model(own)
    with pytest.raises(san.CheckpointError, match="also give its config"):
        san.checkpoint.check_model(PARITY / "checkpoint.pth")


def test_own_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = san.build_san("san_tiny")
    path = san.save_checkpoint(model, tmp_path / "run" / "model.safetensors")
    assert not list(path.parent.glob("*.tmp")), "no temporary file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "the usual permissions, not mkstemp's 0600"
    loaded = san.load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        assert torch.equal(a, b), f"buffer {name} (non-persistent ones are rebuilt, not loaded)"
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors), "every tensor is materialised"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in loaded.named_parameters() if p.requires_grad}
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    a = model.eval().predict_scores([image], ["cat", "sky"])[0]
    b = loaded.predict_scores([image], ["cat", "sky"])[0]
    assert torch.equal(a, b)
    assert san.load_model(path).config == model.config


def test_load_model_dispatch(tmp_path: Path) -> None:
    model = san.load_model(PARITY / "checkpoint.pth", PARITY / "config.json")
    assert model.config.side_adapter.width == 48
    with pytest.raises(san.CheckpointError, match="also give its config"):
        san.load_model(PARITY / "checkpoint.pth")
    with pytest.raises(san.CheckpointError, match="cannot load model"):
        san.load_model(tmp_path / "weights.bin")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(san.checkpoint.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.usefixtures("offline_hub")
def test_released_weights_offline_error_says_how_to_provide_them() -> None:
    with pytest.raises(san.WeightsUnavailableError) as info:
        san.resolve_official_weights("san_vit_b_16")
    message = str(info.value)
    assert "san_vit_b_16.pth" in message and "Mendel192/san" in message
    assert "model /path/to/san_vit_b_16.pth with config san_vit_b_16" in message and "--" not in message
    assert "--model /path/to/san_vit_b_16.pth with --config san_vit_b_16" in info.value.worded(flag)
    assert "SAN_WEIGHTS=" in message
    with pytest.raises(san.WeightsUnavailableError, match="san_vit_large_14.pth"):
        san.load_model("san_vit_l_14")
    with pytest.raises(san.CheckpointError, match="released"):
        san.resolve_official_weights("san_tiny")


def test_released_weights_come_from_the_cache_without_a_network_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(san.checkpoint.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub's cache layout: refs/main names the snapshot that holds the file.
    repo = tmp_path / "hub" / "models--Mendel192--san"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    cached = repo / "snapshots" / commit / "san_vit_b_16.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    calls = []
    download = huggingface_hub.hf_hub_download

    def recording_download(*args, **kwargs):
        calls.append(kwargs)
        return download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
    assert san.resolve_official_weights("san_vit_b_16") == cached
    assert calls == [{"local_files_only": True}]


def test_released_weights_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "san_vit_b_16.pth"
    release.write_bytes(b"x")
    monkeypatch.setenv("SAN_WEIGHTS", str(release))
    assert san.resolve_official_weights("san_vit_b_16") == release
    monkeypatch.setenv("SAN_WEIGHTS", str(tmp_path))
    assert san.resolve_official_weights("san_vit_b_16") == release
    with pytest.raises(san.WeightsUnavailableError, match="does not point to san_vit_large_14.pth"):
        san.resolve_official_weights("san_vit_l_14")


def test_clip_only_weights_from_a_file(tmp_path: Path) -> None:
    torch.manual_seed(3)
    clip = open_clip.model.CLIP(**TINY_CLIP_CFG)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg = get_preset("san_tiny")
    cfg = cfg.replace(clip=type(cfg.clip)(**{**cfg.clip.__dict__, "pretrained": str(tmp_path / "clip.pt")}))
    model = san.build_san(cfg, pretrained_clip=True)
    visual = clip.visual
    assert torch.equal(model.clip_features.conv1.weight, visual.conv1.weight)
    assert torch.equal(
        model.clip_features.resblocks[2].mlp.c_fc.weight, visual.transformer.resblocks[2].mlp.c_fc.weight
    )
    assert torch.equal(
        model.clip_recognition.resblocks[1].attn.in_proj_weight, visual.transformer.resblocks[5].attn.in_proj_weight
    )
    assert torch.equal(model.clip_recognition.proj, visual.proj)
    assert torch.equal(model.text_classifier.text_encoder.token_embedding.weight, clip.token_embedding.weight)
    assert json.dumps(model.config.to_dict())


@pytest.mark.usefixtures("offline_hub")
def test_clip_pretrained_tag_offline() -> None:
    cfg = get_preset("san_vit_b_16")
    with pytest.raises(san.WeightsUnavailableError, match="cannot get the CLIP weights 'openai'"):
        san.build_san(cfg, pretrained_clip=True)
