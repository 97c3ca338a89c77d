"""``jobs/relabel.py``'s options (:class:`RelabelOptions`, its parser generated from the fields)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from san.errors import OptionError
from san.modeling.prompts import TEMPLATE_SETS
from san.other_names import OTHER_CHOICES

from ..label.options import COCO_OPTION, check_coco


@dataclass(kw_only=True)
class RelabelOptions:
    """Everything ``jobs/relabel.py`` accepts; ``run`` is its positional argument, the other fields with ``help`` its
    flags. ``other``, ``min_score`` and ``templates`` left out (``None``) are the source run's."""

    run: str
    vocab: str = field(
        metadata={
            "help": "the new vocabulary: a UTF-8 file as jobs/label.py reads it (synonyms after ':', a class's own "
            "minimum score after '@')"
        }
    )
    output: str = field(
        metadata={
            "help": "the new run's folder (Parquet shards, coco.json, errors, manifest): new or empty, or an "
            "earlier relabel's with the same vocabulary and options to resume it"
        }
    )
    other: str | None = field(
        default=None,
        metadata={
            "help": "distractor names, as jobs/label.py's --other: coco-stuff, coco-all, none or a file of names "
            "(default: the source run's)"
        },
    )
    min_score: float | None = field(
        default=None,
        metadata={"help": "pixels whose best class score is below this are unlabeled (default: the source run's)"},
    )
    templates: str | None = field(
        default=None,
        metadata={"help": "prompt templates (default: the source run's)", "choices": sorted(TEMPLATE_SETS)},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "the source run's weights file, where it has moved since (default: the model its manifest "
            "names; only its text tower runs, once)"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "relabel at most this many new images"})
    shard_size: int = field(default=256, metadata={"help": "rows per Parquet file"})
    coco: str = field(default="single", metadata=COCO_OPTION)
    progress: bool = field(default=True, metadata={"help": "do not show the progress bar"})
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        """Raise :class:`OptionError` naming the option when a value cannot work (before anything starts)."""
        if self.shard_size < 1:
            raise OptionError(f"`shard_size` must be at least 1, got {self.shard_size}")
        check_coco(self.coco)
        if self.limit is not None and self.limit < 0:
            raise OptionError(f"`limit` must be 0 or more, got {self.limit}")
        if self.other is not None and self.other not in OTHER_CHOICES and not Path(self.other).is_file():
            choices = ", ".join(OTHER_CHOICES)
            raise OptionError(f"`other` {self.other!r} is neither one of {choices} nor a file of names")
        if Path(self.output).resolve() == Path(self.run).resolve():
            raise OptionError(f"`output` {self.output} is the run being relabeled; choose a new folder")
