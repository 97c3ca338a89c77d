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
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_atomic
from .config import SANConfig
from .errors import CheckpointError, WeightsUnavailableError
from .official_config import read_official_config

# The model (open_clip, accelerate) is imported where it is built: those imports take seconds, and finding
# the released weights (resolve_official_weights, on a job's driver) needs neither.
if TYPE_CHECKING:
    from .modeling.model import SAN

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
# Keys of each kind a mismatch message names (the rest are counted): it stays one line.
_SHOWN_KEYS = 5
# What a model file may be, for messages about one that is not.
_EXPECTED = (
    "an official SAN release checkpoint {'model': state_dict} (.pth, with its config) or a .safetensors "
    "checkpoint written by this project"
)


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
    """Raise :class:`CheckpointError` counting the missing, unexpected and wrong-shape keys (naming the first
    of each, on one line), so that a checkpoint never loads in part."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = ", ..." if len(keys) > _SHOWN_KEYS else ""
                parts.append(f"{title} ({len(keys)}): " + ", ".join(keys[:_SHOWN_KEYS]) + more)
        raise CheckpointError(f"{source} does not match the model of its config: " + "; ".join(parts))


def build_loaded(config: SANConfig, state_dict: dict[str, torch.Tensor], source: str) -> SAN:
    """A SAN of ``config`` holding ``state_dict``'s weights, in eval mode.

    The model is built with its parameters on the meta device and then takes the checkpoint's
    tensors (cast to the parameter dtypes; same-dtype tensors are used, not copied), which skips the
    random initialisation: building ViT-B/16 drops from about 7 s to 1 s on a CPU.
    """
    from accelerate import init_empty_weights

    from .modeling.model import SAN

    with init_empty_weights(include_buffers=False):  # buffers (pixel mean, causal mask) are real
        model = SAN(config)
    check_state_dict(model, state_dict, source)
    expected = model.state_dict()
    state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def read_official_checkpoint(checkpoint: str | Path | dict, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an official release checkpoint (a path, or the loaded ``{"model": ...}`` dict).

    ``mmap``: map the file instead of reading it (a zip-format file only), so that only what is used of
    the weights is read (:func:`check_model`)."""
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"SAN checkpoint {source!r} does not exist")
        try:
            with warnings.catch_warnings():  # (torch warns of pickle protocols before it refuses a file)
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                mapped = mmap and zipfile.is_zipfile(path)
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
        except Exception as error:  # torch raises several types for a file that is not a checkpoint
            raise CheckpointError(
                f"{source} is not a readable PyTorch checkpoint ({_load_problem(path, error)}); expected {_EXPECTED}"
            ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
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


def _load_problem(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused a file, in a few words (torch's own messages run over many lines)."""
    text = str(error)
    if "Weights only load failed" in text:
        return "it holds Python objects, not only tensors; they are refused unread, as loading them could run code"
    with path.open("rb") as file:
        pickle = file.read(1) == b"\x80"  # the PROTO opcode every pickle since protocol 2 starts with
    if not pickle and not zipfile.is_zipfile(path):
        return "neither a zip archive nor a pickle"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


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
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:  # the cache first: a job start then makes no network call
        return Path(hf_hub_download(HF_REPO, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:  # one request without retries: offline, hf_hub_download's retries take 30 s to give up
        get_hf_file_metadata(hf_hub_url(HF_REPO, filename))
    except HfHubHTTPError:
        pass  # the hub answered (e.g. 503): hf_hub_download below retries, or names the error
    except Exception as error:  # the hub cannot be reached (no network, no name resolution, offline mode)
        raise WeightsUnavailableError(
            f"cannot reach the Hugging Face hub for the released weights {filename} ({type(error).__name__}). {how}"
        ) from error
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
    config, tensors = _open_own_checkpoint(Path(path), read=True)
    return build_loaded(config, tensors, str(path))


def _open_own_checkpoint(path: Path, read: bool) -> tuple[SANConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a file written by :func:`save_checkpoint`; ``read=False``: tensors of the
    right shapes on the meta device, the weights unread."""
    if not path.is_file():
        raise CheckpointError(f"SAN checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {
                k: f.get_tensor(k) if read else torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()
            }
    except Exception as error:  # safetensors raises its own error types for foreign files
        raise CheckpointError(
            f"{path} is not a safetensors file ({error}); official release checkpoints (.pth) load with "
            "san.load_official(path, config)"
        ) from error
    if metadata.get("format") != FORMAT_TAG or "config" not in metadata:
        raise CheckpointError(f"{path} has no SAN config in its metadata (format {metadata.get('format')!r})")
    try:
        return SANConfig.from_dict(json.loads(metadata["config"])), tensors
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the SAN config in its metadata cannot be read ({error})") from error


def load_model(model: str | Path, config: str | Path | None = None) -> SAN:
    """Any supported model reference, in eval mode.

    * a released preset name (``san_vit_b_16``, ``san_vit_l_14``): the official weights;
    * a ``.safetensors`` file written by this project;
    * an official-layout ``.pth`` file, with ``config`` (a preset name or the official config file).
    """
    text = str(model)
    if text in OFFICIAL_RELEASES:
        return load_official(resolve_official_weights(text), config or text)
    if _is_own_checkpoint(text, config):
        return load_checkpoint(text)
    return load_official(text, config)


def check_model(model: str | Path, config: str | Path | None = None) -> None:
    """Raise the one-line :class:`CheckpointError` or :class:`~san.errors.ModelConfigError` that
    :func:`load_model` would raise for a checkpoint file and ``config``, without reading the weights: the
    config is read, and the checkpoint's keys and shapes (a ``.pth`` mapped, a ``.safetensors`` header) are
    compared with a model of that config built on the meta device. A job's driver calls it before its workers
    start, so a file that is no SAN checkpoint is named once, not in each worker's traceback."""
    text = str(model)
    if _is_own_checkpoint(text, config):
        san_config, tensors = _open_own_checkpoint(Path(text), read=False)
    else:
        san_config = read_official_config(config)  # type: ignore[arg-type]  # (not None: _is_own_checkpoint)
        tensors = convert_official_state_dict(read_official_checkpoint(text, mmap=True))
    from accelerate import init_empty_weights

    from .modeling.model import SAN

    with init_empty_weights(include_buffers=False):
        expected = SAN(san_config)
    check_state_dict(expected, tensors, text)


def _is_own_checkpoint(path: str, config: str | Path | None) -> bool:
    """Whether a checkpoint file is this project's ``.safetensors`` (else an official ``.pth`` with ``config``).

    Raises:
        CheckpointError: an official-layout suffix without ``config``, or a suffix of neither kind.
    """
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return True
    if suffix in (".pth", ".pt", ".pkl"):
        if config is None:
            raise CheckpointError(
                f"{path} looks like an official-layout checkpoint: also give its config "
                f"(a preset name such as san_vit_b_16, or the official YAML/JSON config)"
            )
        return False
    raise CheckpointError(
        f"cannot load model {path!r}: give a released preset name {sorted(OFFICIAL_RELEASES)}, "
        "a .safetensors checkpoint of this project, or an official .pth checkpoint with its config"
    )
