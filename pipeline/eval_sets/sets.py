"""The SAN paper's evaluation sets: :data:`EVAL_SETS`, one :class:`EvalSetSpec` per split, and the labeling
job's inputs written from one (:func:`write_eval_set_inputs`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from san.errors import UserError
from san.text_files import parse_class_names

__all__ = [
    "EVAL_SETS",
    "EvalSetError",
    "EvalSetInputs",
    "EvalSetSpec",
    "default_root",
    "get_eval_set",
    "write_eval_set_inputs",
]


class EvalSetError(UserError):
    """A benchmark name, root or layout is wrong; the message says why."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _listing(folder: Path, suffix: str) -> dict[str, Path]:
    """``stem -> path`` of the files directly in ``folder`` whose name ends with ``suffix`` (case-sensitive,
    as detectron2's ``load_sem_seg``); hidden files skipped."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file():
                found[entry.name[: -len(suffix)]] = Path(folder, entry.name)
    return found


@dataclass(frozen=True)
class EvalSetSpec:
    """One evaluation set's prepared validation split (facts: ``docs/eval_sets.md``)."""

    name: str
    title: str
    #: the detectron2 dataset name SAN registers for this split.
    detectron2_name: str
    #: the dataset's folder directly under the datasets root.
    folder: str
    #: image and label folders, relative to :attr:`folder`.
    image_dir: str
    label_dir: str
    image_ext: str
    label_ext: str
    #: raw label value that is ignored (255 for 8-bit labels, 65535 for 16-bit ones).
    ignore_value: int
    #: number of images (= label files) in the official validation split.
    expected_count: int
    num_classes: int
    #: how the official code prepares the split (for messages).
    notes: str = ""

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """Class names, index ``v`` = label value ``v``, exactly as SAN passes them to CLIP."""
        text = resources.files(__package__).joinpath(f"{self.name}.txt").read_text(encoding="utf-8")
        names = parse_class_names(text, f"{self.name}.txt", EvalSetError)
        if len(names) != self.num_classes or None in names:
            raise EvalSetError(f"{self.name}.txt has {len(names)} lines, expected {self.num_classes} class names")
        return tuple(names)  # type: ignore[arg-type]  # no None left

    def resolve_root(self, root: str | os.PathLike[str]) -> Path:
        """The datasets root: ``root`` itself, or its parent when ``root`` is the dataset's own folder.

        Raises:
            EvalSetError: neither holds this benchmark's label folder.
        """
        base = Path(root)
        for candidate in (base, base.parent) if base.name == self.folder else (base,):
            if (candidate / self.folder / self.label_dir).is_dir():
                return candidate
        raise EvalSetError(
            f"{self.name}: no label folder {self.folder}/{self.label_dir} under {str(base)!r} (give the datasets "
            f"root that holds {self.folder}/, prepared as in SAN's README: {self.notes})"
        )

    def image_folder(self, root: str | os.PathLike[str]) -> Path:
        return self.resolve_root(root) / self.folder / self.image_dir

    def label_folder(self, root: str | os.PathLike[str]) -> Path:
        return self.resolve_root(root) / self.folder / self.label_dir

    def label_path(self, image_path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
        """The label file of an image (same stem, in the label folder); it may not exist."""
        name = Path(image_path).name
        stem = name[: -len(self.image_ext)] if name.endswith(self.image_ext) else Path(name).stem
        return self.label_folder(root) / (stem + self.label_ext)

    def label_files(self, root: str | os.PathLike[str]) -> list[Path]:
        """Every label file of the split, sorted by name (warns when the count is not the official one).

        Raises:
            EvalSetError: the label folder is missing or empty.
        """
        folder = self.label_folder(root)
        files = [path for _, path in sorted(_listing(folder, self.label_ext).items())]
        if not files:
            raise EvalSetError(f"{self.name}: no *{self.label_ext} files in {folder}")
        for message in self._count_messages(len(files), f"label files in {folder}"):
            _warn(message)
        return files

    def scan(self, root: str | os.PathLike[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
        """``(pairs, warnings)``: the ``(image, label)`` pairs sorted by stem -- the stems present in both
        folders (detectron2's rule) -- and what looks wrong (unpaired labels, a count that is not the
        official one). Prints nothing.

        Raises:
            EvalSetError: a folder is missing or no image has a label.
        """
        label_folder, image_folder = self.label_folder(root), self.image_folder(root)
        labels = _listing(label_folder, self.label_ext)
        if not image_folder.is_dir():
            raise EvalSetError(f"{self.name}: image folder {image_folder} does not exist")
        images = _listing(image_folder, self.image_ext)
        stems = sorted(labels.keys() & images.keys())
        if not stems:
            raise EvalSetError(
                f"{self.name}: no *{self.image_ext} image in {image_folder} has a *{self.label_ext} label in "
                f"{label_folder} ({len(images)} images, {len(labels)} labels)"
            )
        messages = []
        if len(labels) > len(stems):
            messages.append(
                f"{self.name}: {len(labels) - len(stems)} label file(s) have no image in {image_folder}; "
                "they are left out"
            )
        messages += self._count_messages(len(stems), "image/label pairs")
        return [(images[s], labels[s]) for s in stems], messages

    def pairs(self, root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
        """:meth:`scan`'s pairs; its warnings go to stderr."""
        pairs, messages = self.scan(root)
        for message in messages:
            _warn(message)
        return pairs

    def image_paths(self, root: str | os.PathLike[str]) -> list[Path]:
        """The split's images (those with a label), sorted by stem; warnings go to stderr."""
        return [image for image, _ in self.pairs(root)]

    def _count_messages(self, count: int, what: str) -> list[str]:
        if count == self.expected_count:
            return []
        return [
            f"{self.name}: {count} {what}, but the official {self.title} validation split has "
            f"{self.expected_count}; numbers will not be comparable with the paper's"
        ]


EVAL_SETS: dict[str, EvalSetSpec] = {
    spec.name: spec
    for spec in (
        EvalSetSpec(
            "ade150", "ADE20K-150", "ade20k_sem_seg_val", "ADEChallengeData2016",
            "images/validation", "annotations_detectron2/validation", ".jpg", ".png", 255, 2000, 150,
            "annotations_detectron2 from prepare_ade20k_sem_seg.py",
        ),
        EvalSetSpec(
            "ade847", "ADE20K-847", "ade20k_full_sem_seg_val", "ADE20K_2021_17_01",
            "images_detectron2/validation", "annotations_detectron2/validation", ".jpg", ".tif", 65535, 2000, 847,
            "images_detectron2 and annotations_detectron2 from prepare_ade20k_full_sem_seg.py",
        ),
        EvalSetSpec(
            "pc59", "Pascal Context-59", "pcontext_sem_seg_val", "pcontext",
            "val/image", "val/label", ".jpg", ".png", 255, 5105, 59,
            "val/image and val/label from prepare_pcontext_sem_seg_59cls.py",
        ),
        EvalSetSpec(
            "pc459", "Pascal Context-459", "pcontext_full_sem_seg_val", "pcontext_full",
            "val/image", "val/label", ".jpg", ".tif", 65535, 5105, 459,
            "val/image and val/label from prepare_pcontext_sem_seg_459cls.py",
        ),
        EvalSetSpec(
            "voc20", "Pascal VOC-20", "voc_sem_seg_val", "VOC2012",
            "JPEGImages", "annotations_detectron2/val", ".jpg", ".png", 255, 1449, 20,
            "annotations_detectron2 from prepare_voc_sem_seg.py",
        ),
        EvalSetSpec(
            "cocostuff171", "COCO-Stuff-171", "coco_2017_test_stuff_sem_seg", "coco",
            "val2017", "stuffthingmaps_detectron2/val2017", ".jpg", ".png", 255, 5000, 171,
            "stuffthingmaps_detectron2 from prepare_coco_stuff_164k_sem_seg.py",
        ),
    )
}  # fmt: skip


def get_eval_set(name: str) -> EvalSetSpec:
    """The spec registered as ``name`` (case-insensitive).

    Raises:
        EvalSetError: unknown name (the message lists the known ones).
    """
    spec = EVAL_SETS.get(str(name).strip().lower())
    if spec is None:
        raise EvalSetError(f"unknown benchmark {name!r}; known: {', '.join(EVAL_SETS)}")
    return spec


def default_root() -> str:
    """detectron2's datasets root: ``$DETECTRON2_DATASETS``, else ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


@dataclass(frozen=True)
class EvalSetInputs:
    """What :func:`write_eval_set_inputs` wrote."""

    vocab_path: Path
    images_path: Path
    num_images: int
    warnings: tuple[str, ...]


def _vocabulary_text(spec: EvalSetSpec) -> str:
    from ..vocabulary import parse_vocabulary

    for name in spec.class_names:
        if ":" in name or "#" in name or name != " ".join(name.split()):
            raise EvalSetError(f"{spec.name}: class {name!r} cannot be written to a vocabulary file as one name")
    header = (
        f"# {spec.title} ({spec.name}; detectron2 dataset {spec.detectron2_name}): {len(spec.class_names)} classes.\n"
        "# Line order = ground-truth label value. Names exactly as SAN passes them to CLIP: a comma is part of\n"
        "# the name (one prompt), not a synonym separator.\n"
    )
    text = header + "\n".join(spec.class_names) + "\n"
    vocabulary = parse_vocabulary(text, f"{spec.name} vocabulary")
    if vocabulary.names != spec.class_names or any(vocabulary.synonyms):
        raise EvalSetError(f"{spec.name}: the vocabulary file would not reproduce the class names")
    return text


def write_eval_set_inputs(name: str, root: str | os.PathLike[str], out: str | os.PathLike[str]) -> EvalSetInputs:
    """Write ``OUT/vocab.txt`` (the benchmark's classes, in label order) and ``OUT/images.txt`` (absolute
    paths of its validation images, one per line) for ``jobs/label.py --vocab ... --input ...``. Count
    warnings are returned (:attr:`EvalSetInputs.warnings`), not printed.

    Raises:
        EvalSetError: unknown benchmark, missing folders, no pairs.
    """
    spec = get_eval_set(name)
    target = Path(out)
    pairs, messages = spec.scan(root)
    images = [image for image, _ in pairs]
    vocab_text = _vocabulary_text(spec)
    vocab_path, images_path = target / "vocab.txt", target / "images.txt"
    try:
        target.mkdir(parents=True, exist_ok=True)
        vocab_path.write_text(vocab_text, encoding="utf-8")
        images_path.write_text("".join(f"{p.absolute()}\n" for p in images), encoding="utf-8")
    except OSError as error:
        raise EvalSetError(f"cannot write into {str(target)!r}: {error.strerror or error}") from error
    return EvalSetInputs(vocab_path, images_path, len(images), tuple(messages))
