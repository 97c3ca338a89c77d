"""Loading and saving SAN weights.

* The official release layout (``{"model": state_dict}``, as ``san_vit_b_16.pth``), converted by
  the pure key-mapping function :func:`convert_official_state_dict`.
* The released checkpoints by name, through huggingface_hub's cache (``Mendel192/san``).
* The project's own format: one safetensors file whose metadata carries the config.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_atomic
from .config import SANConfig
from .errors import CheckpointError, WeightsUnavailableError
from .modeling.model import SAN
from .official_config import read_official_config

HF_REPO = "Mendel192/san"
OFFICIAL_RELEASES = {"san_vit_b_16": "san_vit_b_16.pth", "san_vit_l_14": "san_vit_large_14.pth"}
WEIGHTS_ENV = "SAN_WEIGHTS"
FORMAT_TAG = "san-labeler/1"
logger = logging.getLogger(__name__)

# (official prefix, our prefix), first match wins.
_OFFICIAL_RENAMES = (
    ("clip_visual_extractor.", "clip_features."),
    ("clip_rec_head.", "clip_recognition."),
    ("side_adapter_network.vit_model.", "side_adapter.vit."),
    ("side_adapter_network.", "side_adapter."),
    ("ov_classifier.bg_embed", "text_classifier.bg_embed"),
    ("ov_classifier.", "text_classifier.text_encoder."),
)
# Buffers the official model saves but this one recomputes (the text causal mask) or keeps in the
# training loss (the no-object class weight).
_OFFICIAL_DROPPED = ("ov_classifier.attn_mask", "criterion.empty_weight")


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official SAN state dict's keys to this project's module names (pure function).

    Keys the official model saves but this one does not hold are dropped; unknown keys are kept
    unchanged so that :func:`check_state_dict` reports them.
    """
    converted = {}
    for key, value in state_dict.items():
        if key in _OFFICIAL_DROPPED:
            continue
        for old, new in _OFFICIAL_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value
    return converted


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and wrong-shape key, so that
    a checkpoint never loads in part."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = [f"{source} does not match the model:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                parts.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(parts))


def build_loaded(config: SANConfig, state_dict: dict[str, torch.Tensor], source: str) -> SAN:
    """A SAN of ``config`` holding ``state_dict``'s weights, in eval mode.

    The model is built with its parameters on the meta device and then takes the checkpoint's
    tensors (cast to the parameter dtypes; same-dtype tensors are used, not copied), which skips the
    random initialisation: building ViT-B/16 drops from about 7 s to 1 s on a CPU.
    """
    with init_empty_weights(include_buffers=False):  # buffers (pixel mean, causal mask) are real
        model = SAN(config)
    check_state_dict(model, state_dict, source)
    expected = model.state_dict()
    state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def read_official_checkpoint(checkpoint: str | Path | dict) -> dict[str, torch.Tensor]:
    """The state dict of an official release checkpoint (a path, or the loaded ``{"model": ...}`` dict)."""
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"SAN checkpoint {source!r} does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a file that is not a checkpoint
            raise CheckpointError(f"{source} is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{source} is not of the official SAN release layout {{'model': state_dict}} (found {keys}); "
            "for this project's own checkpoints use san.load_checkpoint"
        )
    state_dict = checkpoint["model"]
    prefixes = ("clip_visual_extractor.", "clip_rec_head.", "side_adapter_network.", "ov_classifier.")
    if not any(k.startswith(prefixes) for k in state_dict):
        raise CheckpointError(
            f"{source}: no key starts with the official SAN prefixes {prefixes}; first keys: {sorted(state_dict)[:5]}"
        )
    return state_dict


def load_official(checkpoint: str | Path | dict, config: str | Path | dict | SANConfig) -> SAN:
    """A SAN built from an official release checkpoint and its config, in eval mode.

    ``config`` is a preset name (``"san_vit_b_16"``), a JSON/YAML file or dict with the official
    field names, or a :class:`SANConfig`. A checkpoint given as a dict lends the model its tensors.
    """
    san_config = config if isinstance(config, SANConfig) else read_official_config(config)
    state_dict = convert_official_state_dict(read_official_checkpoint(checkpoint))
    return build_loaded(san_config, state_dict, str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint")


def resolve_official_weights(name: str) -> Path:
    """Local path of a released checkpoint (``san_vit_b_16`` or ``san_vit_l_14``).

    ``$SAN_WEIGHTS`` (a file, or a folder holding the release files) wins; otherwise the file is
    taken from huggingface_hub's cache, downloading it when online.
    """
    if name not in OFFICIAL_RELEASES:
        raise CheckpointError(f"no released weights named {name!r}; released: {sorted(OFFICIAL_RELEASES)}")
    filename = OFFICIAL_RELEASES[name]
    how = (
        f"Download https://huggingface.co/{HF_REPO}/resolve/main/{filename} on a machine with internet "
        f"access, then give it as `model` /path/to/{filename} with `config` {name}, or set "
        f"{WEIGHTS_ENV}=/path/to/{filename} (or a folder holding it)."
    )
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env) / filename if Path(env).is_dir() else Path(env)
        if not path.is_file():
            raise WeightsUnavailableError(f"{WEIGHTS_ENV}={env!r} does not point to {filename}. {how}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # the cache first: a job start then makes no network call (offline, hub retries take 30 s)
        return Path(hf_hub_download(HF_REPO, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    logger.warning(
        "%s is not in the Hugging Face cache; downloading it from %s (without internet access, set %s instead)",
        filename,
        HF_REPO,
        WEIGHTS_ENV,
    )
    try:
        return Path(hf_hub_download(HF_REPO, filename))
    except Exception as error:  # offline, auth or HTTP errors: all mean "not available"
        raise WeightsUnavailableError(
            f"cannot get the released weights {filename} from the Hugging Face repository {HF_REPO} "
            f"({type(error).__name__}). {how}"
        ) from error


def save_checkpoint(model: SAN, path: str | Path) -> Path:
    """Write the model's config and weights to one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT_TAG, "config": json.dumps(model.config.to_dict())}

    def save(tmp: Path) -> None:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; give the file the usual permissions

    write_atomic(path, save)
    return path


def load_checkpoint(path: str | Path) -> SAN:
    """A SAN from a file written by :func:`save_checkpoint`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAN checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own error types for foreign files
        raise CheckpointError(
            f"{path} is not a safetensors file ({error}); official release checkpoints (.pth) load with "
            "san.load_official(path, config)"
        ) from error
    if metadata.get("format") != FORMAT_TAG or "config" not in metadata:
        raise CheckpointError(f"{path} has no SAN config in its metadata (format {metadata.get('format')!r})")
    return build_loaded(SANConfig.from_dict(json.loads(metadata["config"])), tensors, str(path))


def load_model(model: str | Path, config: str | Path | None = None) -> SAN:
    """Any supported model reference, in eval mode.

    * a released preset name (``san_vit_b_16``, ``san_vit_l_14``): the official weights;
    * a ``.safetensors`` file written by this project;
    * an official-layout ``.pth`` file, with ``config`` (a preset name or the official config file).
    """
    text = str(model)
    if text in OFFICIAL_RELEASES:
        return load_official(resolve_official_weights(text), config or text)
    path = Path(text)
    if path.suffix == ".safetensors":
        return load_checkpoint(path)
    if path.suffix in (".pth", ".pt", ".pkl"):
        if config is None:
            raise CheckpointError(
                f"{path} looks like an official-layout checkpoint: also give its config "
                f"(a preset name such as san_vit_b_16, or the official YAML/JSON config)"
            )
        return load_official(path, config)
    raise CheckpointError(
        f"cannot load model {text!r}: give a released preset name {sorted(OFFICIAL_RELEASES)}, "
        "a .safetensors checkpoint of this project, or an official .pth checkpoint with its config"
    )
