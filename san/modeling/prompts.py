"""CLIP prompts of class names without torch: the prompt template sets, and the check that a name's longest prompt
fits CLIP's text context (with open_clip's own tokenizer). The labeling job's driver checks its vocabulary with them
before Ray starts, and never imports torch for it (:mod:`san.modeling.text_classifier` encodes the prompts)."""

from __future__ import annotations

import builtins
import functools
import importlib.util
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer

# ViLD's prompt templates (Gu et al., 2022), SAN's default set.
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def _imagenet_templates() -> tuple[str, ...]:
    """OpenAI's 80 ImageNet prompts, as open_clip ships them (callables -> format strings)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


#: Each template set's name -> its templates (made on first use: see the open_clip imports).
TEMPLATE_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "vild": lambda: VILD_TEMPLATES,
    "imagenet": _imagenet_templates,
}


def get_templates(name: str) -> tuple[str, ...]:
    """The prompt templates registered as ``name`` (each has one ``{}`` for the class name)."""
    if name not in TEMPLATE_SETS:
        raise KeyError(f"unknown template set {name!r}; available: {sorted(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]()


# CLIP's text context: start token, prompt tokens, end token. A longer prompt is cut (open_clip's tokenizer).
CONTEXT_LENGTH = 77
# Tokens that joining a name and a template can add over their separate counts (where a name's last
# punctuation meets the template's); a name with this much room is not tokenized in every template.
_JOIN_MARGIN = 4


class _TorchPlaceholder(types.ModuleType):
    """What the tokenizer's module gets for its ``import torch`` (:func:`_tokenizer`): every attribute is
    ``object``, enough for the annotations (``-> torch.LongTensor``) that Python evaluates as it defines them."""

    def __getattr__(self, name: str) -> type:
        return object


def _import_without_torch(name: str, *args: Any, **kwargs: Any) -> Any:
    """``__import__`` for the tokenizer's module: its ``import torch`` gets a :class:`_TorchPlaceholder`."""
    return _TorchPlaceholder("torch") if name == "torch" else builtins.__import__(name, *args, **kwargs)


@functools.cache
def _tokenizer() -> SimpleTokenizer:
    """open_clip's tokenizer, its module loaded alone from its file: importing ``open_clip.tokenizer`` runs the
    package's ``__init__`` first (torchvision, torch._dynamo: seconds of every job's start, measured), and the module
    imports nothing else of open_clip. The same file, so the same tokens.

    The module imports torch only to return tensors from ``SimpleTokenizer.__call__``; ``encode``, all that the
    length check calls, is plain Python. So its ``import torch`` gets a placeholder (:func:`_import_without_torch`,
    through the module's own builtins: nothing else in the process sees it), which spares the labeling job's driver
    the import of torch, two seconds of every start on 2 CPUs (measured)."""
    package = importlib.util.find_spec("open_clip")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed")
    spec = importlib.util.spec_from_file_location(
        "_open_clip_tokenizer", Path(package.submodule_search_locations[0]) / "tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = {**vars(builtins), "__import__": _import_without_torch}
    spec.loader.exec_module(module)
    built = getattr(module, "_tokenizer", None)  # the module builds its default tokenizer as it loads: no second one
    return built if isinstance(built, module.SimpleTokenizer) else module.SimpleTokenizer()


def prompt_length_problem(name: str, templates: Sequence[str], context_length: int = CONTEXT_LENGTH) -> str | None:
    """Why ``name`` cannot be used: its longest prompt (``name`` in one of ``templates``) has more tokens than
    CLIP reads, so it would be cut, and names that differ only after the cut would get one embedding.
    ``None`` when every prompt fits."""
    tokenizer = _tokenizer()
    fixed = max(len(tokenizer.encode(template.replace("{}", " "))) for template in templates)
    if len(tokenizer.encode(name)) + fixed + 2 + _JOIN_MARGIN <= context_length:
        return None  # (the exact count below costs a tokenization per template)
    tokens, prompt = max((len(tokenizer.encode(t.format(name))) + 2, t.format(name)) for t in templates)
    if tokens <= context_length:
        return None
    return (
        f"{name!r} is too long: its prompt {prompt!r} has {tokens} tokens and CLIP reads {context_length} "
        "(the rest would be cut); shorten it"
    )
