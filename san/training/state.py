"""A training run's state on disk: RNG states and the atomic checkpoint that ``resume`` continues from.

``OUTPUT/checkpoints/`` holds ``last.safetensors`` (``san.save_checkpoint``: config + weights, what
``jobs/label.py --model`` loads) and ``last.pt`` (optimizer, scheduler, scaler, step, python/numpy/torch RNG
states of every worker, the training config, the class names, and the name of its weights file).
:func:`resume_state` decides what a run starts from: it refuses a new run into a folder that holds one, and a
resumed run whose settings (:data:`san.training.config.RUN_FIELDS`, the class names) differ from its checkpoint's.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..atomic import write_atomic
from ..checkpoint import load_checkpoint
from ..checkpoint import save_checkpoint as save_model
from ..errors import OptionError
from ..modeling.model import SAN
from .config import TrainConfig, resume_differences

__all__ = [
    "CHECKPOINT_DIR",
    "LAST_STATE",
    "LAST_WEIGHTS",
    "all_rng_states",
    "holds_checkpoints",
    "load_resume_state",
    "replace_file",
    "resume_state",
    "rng_state",
    "save_training_checkpoint",
    "set_rng_state",
]

CHECKPOINT_DIR = "checkpoints"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.pt"


# ----------------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, loadable with ``weights_only``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state of :func:`rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def all_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every worker's :func:`rng_state`, by rank (a collective when ``world_size > 1``: all workers call it)."""
    state = rng_state()
    if world_size == 1:
        return [state]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, state)
    return out


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def replace_file(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of ``src`` (a hard link when the filesystem allows)."""
    write_atomic(dst, lambda tmp: _link_or_copy(src, tmp))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_training_checkpoint(folder: Path, model: SAN, state: dict[str, Any], keep: bool = False) -> Path:
    """Write ``step_N.safetensors`` (the model), then ``last.pt`` (``state`` plus the weights' file name),
    then ``last.safetensors``; older step files are removed unless ``keep``. A crash at any point leaves a
    consistent ``last.pt`` -> weights pair. Returns the path of ``last.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"step_{state['step']:07d}.safetensors"
    save_model(model, weights)
    write_atomic(folder / LAST_STATE, lambda tmp: torch.save({**state, "weights": weights.name}, tmp))
    replace_file(weights, folder / LAST_WEIGHTS)
    if not keep:
        for old in folder.glob("step_*.safetensors"):
            if old != weights:
                old.unlink(missing_ok=True)
    return folder / LAST_WEIGHTS


def load_resume_state(
    folder: str | os.PathLike[str], state: dict[str, Any] | None = None
) -> tuple[SAN, dict[str, Any]]:
    """The model (train mode) and the training state saved in ``folder`` by :func:`save_training_checkpoint`
    (``state``: its ``last.pt``, when already read)."""
    folder = Path(folder)
    if state is None:
        state = _read_state(folder)
    weights = folder / state["weights"]
    if not weights.is_file():
        weights = folder / LAST_WEIGHTS
    return load_checkpoint(weights).train(), state


def _read_state(folder: Path) -> dict[str, Any]:
    """The ``last.pt`` in ``folder``."""
    return torch.load(folder / LAST_STATE, map_location="cpu", weights_only=True)


def holds_checkpoints(folder: str | os.PathLike[str]) -> bool:
    """Whether a checkpoints folder holds a run's checkpoint (``last.pt``, ``last.safetensors`` or a step file)."""
    folder = Path(folder)
    names = (LAST_STATE, LAST_WEIGHTS)
    return any((folder / name).is_file() for name in names) or any(folder.glob("step_*.safetensors"))


def resume_state(cfg: TrainConfig, classes: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The training state (``last.pt``) that ``cfg`` continues from; None for a new run (also with
    ``cfg.resume`` when there is no checkpoint yet).

    Raises :class:`san.errors.OptionError` for a new run into an output folder that holds checkpoints (they and
    metrics.csv would be overwritten), and for a resumed run whose :data:`san.training.config.RUN_FIELDS` or class names
    (``classes``, when given) differ from the checkpoint's, listing each difference."""
    folder = Path(cfg.output) / CHECKPOINT_DIR
    if not cfg.resume:
        if holds_checkpoints(folder):
            raise OptionError(
                f"{cfg.output} already holds a training run; use `resume` to continue it, or choose a new `output`"
            )
        return None
    if not (folder / LAST_STATE).is_file():
        return None
    state = _read_state(folder)
    saved = state.get("config")  # always saved by san.training.loop; a state without one has nothing to compare
    differences = resume_differences(saved, cfg) if saved else []
    if classes is not None and state.get("classes") is not None and list(state["classes"]) != list(classes):
        differences.append(f"classes: checkpoint {_names(state['classes'])}, command {_names(classes)}")
    if differences:
        raise OptionError(
            f"`resume`: {folder / LAST_STATE} was saved by a run with other settings than this command's:\n  "
            + "\n  ".join(differences)
            + "\nrerun with the original values to continue it, or start a new run with a new `output`"
        )
    return state


def _names(classes: Sequence[str], shown: int = 6) -> str:
    """A short description of a class list: its first names and count."""
    head = ", ".join(repr(c) for c in list(classes)[:shown])
    return f"[{head}{', ...' if len(classes) > shown else ''}] ({len(classes)} classes)"
