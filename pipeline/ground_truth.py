"""Ground-truth readers for evaluating a labeling run: per image, a label map of ground-truth class indices.

Every reader is a :class:`GroundTruth`: it knows its class names (``class_names``, index ``i`` = class
``i``), the keys of its images (:meth:`GroundTruth.keys`), which of its images belongs to a predicted
``image_path`` (:meth:`GroundTruth.match`) and reads one image's label map (:meth:`GroundTruth.read`):
an ``int32 [H, W]`` array holding ``0..K-1`` or :data:`IGNORE` (-1, pixels left out of every metric).
Readers are chosen from a ``--gt`` spec by :func:`open_ground_truth`; new kinds (e.g. a FiftyOne
dataset field) plug in with :func:`register_ground_truth` under a ``scheme:`` prefix.

Built-in readers
----------------
``png:`` / a directory -- :class:`PngFolderGroundTruth`
    Label images (``.png``, ``.tif``, ``.tiff``; 8-bit grayscale or palette, or 16-bit), searched
    recursively (hidden files and folders skipped). Pixel value ``v`` is the class on line ``v`` (0-based)
    of the class-names file (see :func:`read_class_names`); without one, the vocabulary's order (value
    ``i`` = vocabulary class ``i``). Ignored: ``ignore_index`` (255 unless the class list names a class at
    value 255, then 65535, as detectron2 does for ADE-847 / Pascal Context-459), 65535 (the predictions'
    16-bit "unlabeled"), and gap lines. Any other value with no class is an error naming the file.

``coco:`` / a ``.json`` file -- :class:`CocoGroundTruth`
    A COCO dataset whose annotations are per-class semantic regions (polygons, compressed or uncompressed
    RLE, decoded with ``pycocotools`` ``annToMask``). Classes are its ``categories`` sorted by id.
    Pixels no annotation covers are ignored. Overlaps: annotations of the *same* category simply union;
    a pixel covered by annotations of *different* categories is ignored (the ground truth contradicts
    itself there, and "later wins" would score an arbitrary one of them). ``iscrowd`` regions count like
    any other annotation.

``fiftyone:DATASET[:FIELD]`` -- :class:`pipeline.review.FiftyOneGroundTruth`
    A ``Segmentation`` field (default ``ground_truth``) of a FiftyOne dataset; classes from its mask
    targets (or ``--gt-classes``), value 0 ignored. FiftyOne is imported only when this scheme is used.

Matching prediction images to ground-truth images
-------------------------------------------------
Candidates are the ground-truth images with the same file stem (name without extension) as the
predicted image. Among them the best is chosen by, in order: identical path (COCO ``file_name`` equal
to ``image_path``); the number of trailing folder names the two paths share (so ``a/x.png`` and
``b/x.png`` are told apart by ``.../a/x.jpg``); identical file name with extension. A tie for the best
is an error (ambiguous ground truth), never a silent pick. Several predictions may match the same
ground-truth image; :func:`match_predictions` reports how often that happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IGNORE",
    "CocoGroundTruth",
    "GroundTruth",
    "GroundTruthError",
    "Matching",
    "PngFolderGroundTruth",
    "match_predictions",
    "normalise_class_name",
    "open_ground_truth",
    "read_class_names",
    "register_ground_truth",
]

IGNORE = -1
"""Value of ignored pixels in the label maps every reader returns."""

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_UNLABELED_U16 = 65535
_INVALID = -2  # lookup-table marker: a raw value that names no class
_EXAMPLES = 5


class GroundTruthError(ValueError):
    """The ground truth cannot be read or does not fit the predictions; the message says why."""


def normalise_class_name(name: str) -> str:
    """The key classes are aligned by: case-folded, whitespace stripped and collapsed to one space."""
    return " ".join(str(name).split()).casefold()


def _check_distinct(names: Sequence[str], source: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = normalise_class_name(name)
        if key in seen:
            raise GroundTruthError(f"{source}: class {name!r} appears twice (also as {seen[key]!r})")
        seen[key] = name


def _parts(path: str) -> tuple[str, ...]:
    """Path components, '/' or '\\' separated, without a URI scheme and without '.' or empty parts."""
    text = str(path).replace("\\", "/")
    if "://" in text:
        text = text.split("://", 1)[1]
    return tuple(p for p in text.split("/") if p not in ("", "."))


def _stem(path: str) -> str:
    parts = _parts(path)
    return PurePosixPath(parts[-1]).stem if parts else ""


class GroundTruth(ABC):
    """One source of ground-truth label maps (see the module docstring).

    Subclasses set :attr:`class_names` and :attr:`description` and implement :meth:`keys`,
    :meth:`path_of` and :meth:`read`; :meth:`match` works from :meth:`path_of` and need only be
    overridden by readers that match images another way.
    """

    #: ground-truth class names; label-map value ``i`` is ``class_names[i]``.
    class_names: tuple[str, ...]
    #: what was read, for messages and metrics.json (e.g. "PNG folder /data/gt (150 classes)").
    description: str
    #: value of ignored pixels in :meth:`read`'s arrays.
    ignore_value: int = IGNORE
    #: raw ground-truth value(s) this reader ignored, for metrics.json; None where not value-based.
    raw_ignore: list[int] | None = None

    @abstractmethod
    def keys(self) -> list[Hashable]:
        """Every ground-truth image's key."""

    @abstractmethod
    def path_of(self, key: Hashable) -> str:
        """The path (or file name) a key stands for; used for matching and in messages."""

    @abstractmethod
    def read(self, key: Hashable) -> np.ndarray:
        """The label map of one image: ``int32 [H, W]``, values ``0..K-1`` or :attr:`ignore_value`.

        Raises:
            GroundTruthError: the file is unreadable or holds a value that names no class.
        """

    def match(self, image_path: str) -> Hashable | None:
        """The key of the ground truth for a predicted ``image_path``, or None (rule in the module docstring).

        Raises:
            GroundTruthError: two or more ground-truth images fit equally well.
        """
        index = self._stem_index()
        candidates = index.get(_stem(image_path), [])
        if not candidates:
            return None
        pred = _parts(image_path)
        pred_text = str(image_path).replace("\\", "/")

        def score(key: Hashable) -> tuple[int, int, int]:
            gt_path = self.path_of(key)
            gt = _parts(gt_path)
            shared = 0
            while shared + 1 < min(len(pred), len(gt)) and pred[-2 - shared] == gt[-2 - shared]:
                shared += 1
            return (int(gt_path.replace("\\", "/") == pred_text), shared, int(gt[-1] == pred[-1]))

        scored = sorted(((score(k), k) for k in candidates), key=lambda item: item[0], reverse=True)
        best = [k for s, k in scored if s == scored[0][0]]
        if len(best) > 1:
            shown = ", ".join(repr(self.path_of(k)) for k in best[:_EXAMPLES])
            raise GroundTruthError(f"ambiguous ground truth for {image_path!r}: it fits {shown} equally well")
        return best[0]

    def _stem_index(self) -> dict[str, list[Hashable]]:
        index = getattr(self, "_index_cache", None)
        if index is None:
            index = {}
            for key in self.keys():
                index.setdefault(_stem(self.path_of(key)), []).append(key)
            self._index_cache = index
        return index


@dataclass
class Matching:
    """Which predicted images have ground truth (from :func:`match_predictions`)."""

    matched: dict[str, Hashable]
    predictions_without_ground_truth: list[str]
    ground_truth_without_prediction: list[str]
    shared_ground_truth: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts and a few examples, JSON-serialisable."""
        return {
            "matched": len(self.matched),
            "predictions_without_ground_truth": len(self.predictions_without_ground_truth),
            "predictions_without_ground_truth_examples": self.predictions_without_ground_truth[:_EXAMPLES],
            "ground_truth_without_prediction": len(self.ground_truth_without_prediction),
            "ground_truth_without_prediction_examples": self.ground_truth_without_prediction[:_EXAMPLES],
            "ground_truth_matched_by_several_predictions": len(self.shared_ground_truth),
            "ground_truth_matched_by_several_predictions_examples": {
                k: v for k, v in list(self.shared_ground_truth.items())[:_EXAMPLES]
            },
        }


def match_predictions(gt: GroundTruth, image_paths: Iterable[str]) -> Matching:
    """Match every predicted image to its ground truth.

    Raises:
        GroundTruthError: nothing matches at all (the message shows examples of both sides), or a
            match is ambiguous.
    """
    matched: dict[str, Hashable] = {}
    missing: list[str] = []
    users: dict[Hashable, list[str]] = {}
    paths = list(image_paths)
    for path in paths:
        key = gt.match(path)
        if key is None:
            missing.append(path)
        else:
            matched[path] = key
            users.setdefault(key, []).append(path)
    unused = [gt.path_of(k) for k in gt.keys() if k not in users]
    shared = {gt.path_of(k): v for k, v in users.items() if len(v) > 1}
    if not matched:
        pred_examples = ", ".join(repr(p) for p in paths[:3]) or "none"
        gt_examples = ", ".join(repr(p) for p in unused[:3]) or "none"
        raise GroundTruthError(
            f"no predicted image matches any ground-truth image of {gt.description} (images are matched by "
            f"file name without extension); predicted images, e.g.: {pred_examples}; ground truth, e.g.: "
            f"{gt_examples}"
        )
    return Matching(matched, missing, unused, shared)


def read_class_names(path: str | os.PathLike[str]) -> tuple[list[str | None], list[int]]:
    """Read a ground-truth class-names file: line ``v`` (0-based) names the class of pixel value ``v``.

    Every line counts, so line numbers stay aligned with pixel values. A line that is empty or whose
    first non-blank character is ``#`` is a *gap*: that value is no class and its pixels are ignored
    (e.g. ``# other`` on line 0 for ADE20K's raw annotations, whose 0 means "other"). Whitespace in
    names is stripped and collapsed; trailing gap lines are dropped; a leading UTF-8 BOM is ignored.

    Returns:
        ``(names_by_value, gap_values)``: one entry per value, None for a gap.

    Raises:
        FileNotFoundError: the file does not exist.
        GroundTruthError: unreadable, not UTF-8, no class, or a name repeated (case-insensitively).
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--gt-classes file not found: {source}") from None
    except UnicodeDecodeError as exc:
        raise GroundTruthError(f"{source}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise GroundTruthError(f"{source}: cannot read: {exc.strerror or exc}") from None
    text = text.removeprefix("\ufeff")
    names: list[str | None] = []
    for raw in text.split("\n"):
        name = " ".join(raw.split())
        names.append(None if not name or name.startswith("#") else name)
    while names and names[-1] is None:
        names.pop()
    if not names:
        raise GroundTruthError(f"{source}: no class names (only blank lines and '#' lines)")
    _check_distinct([n for n in names if n is not None], source)
    return names, [v for v, n in enumerate(names) if n is None]


def read_label_image(path: Path, expected: str) -> np.ndarray:
    """The pixels of a single-channel label image as int64 ``[H, W]``.

    Raises :class:`GroundTruthError` naming the file when it cannot be read, or when it has colour
    channels (``expected`` says what the reader wants instead).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            raw = np.asarray(img)
    except Exception as exc:  # PIL raises many types on bad files
        raise GroundTruthError(f"cannot read ground truth {path}: {type(exc).__name__}: {exc}") from None
    if mode not in ("L", "P", "I") and not mode.startswith("I;16"):
        raise GroundTruthError(f"ground truth {path} is a {mode!r} image; {expected}")
    return raw.astype(np.int64, copy=False)


class PngFolderGroundTruth(GroundTruth):
    """Label images in a folder (recursive), one per image, matched by file stem (module docstring).

    Args:
        folder: the directory.
        names_by_value: class name per pixel value, None for a gap (see :func:`read_class_names`).
        ignore_index: the raw value of ignored pixels (default 255); when ``names_by_value`` names a class
            at that value it is replaced by 65535 (see :attr:`raw_ignore`).
    """

    def __init__(self, folder: str | os.PathLike[str], names_by_value: Sequence[str | None], ignore_index: int = 255):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--gt folder {str(self.folder)!r} does not exist or is not a directory")
        if len(names_by_value) > _UNLABELED_U16:
            raise GroundTruthError(f"{len(names_by_value)} class values do not fit 16-bit label images")
        ignore = int(ignore_index)
        if 0 <= ignore < len(names_by_value) and names_by_value[ignore] is not None:
            ignore = _UNLABELED_U16  # 255 is a class (large vocabularies): detectron2 uses 65535 then
        self.raw_ignore = sorted({ignore, _UNLABELED_U16})
        self._files: list[str] = []
        for file in self.folder.rglob("*"):
            rel = file.relative_to(self.folder).as_posix()
            hidden = any(part.startswith(".") for part in rel.split("/"))
            if file.suffix.lower() in LABEL_SUFFIXES and not hidden and file.is_file():
                self._files.append(rel)
        self._files.sort()
        if not self._files:
            raise GroundTruthError(f"no label images ({', '.join(LABEL_SUFFIXES)}) found under {self.folder}")
        classes = [n for n in names_by_value if n is not None]
        self.class_names = tuple(classes)
        self.description = f"PNG folder {self.folder} ({len(self._files)} files, {len(classes)} classes)"
        # Raw value -> class index, IGNORE, or _INVALID (a value that names nothing: an error).
        self._num_values = len(names_by_value)
        self._lut = np.full(_UNLABELED_U16 + 1, _INVALID, dtype=np.int32)
        index = 0
        for value, name in enumerate(names_by_value):
            if name is None:
                self._lut[value] = IGNORE
            else:
                self._lut[value] = index
                index += 1
        for value in self.raw_ignore:
            if 0 <= value <= _UNLABELED_U16:
                self._lut[value] = IGNORE

    def keys(self) -> list[Hashable]:
        return list(self._files)

    def path_of(self, key: Hashable) -> str:
        return str(key)

    def read(self, key: Hashable) -> np.ndarray:
        path = self.folder / str(key)
        raw = read_label_image(
            path,
            "label images must be 8-bit grayscale or palette, or 16-bit grayscale, holding one class value per pixel",
        )
        if raw.size and (raw.min() < 0 or raw.max() > _UNLABELED_U16):
            raise GroundTruthError(f"ground truth {path} has values outside 0..65535")
        labels = self._lut[raw]
        bad = labels == _INVALID
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(v) for v in values[:10])
            raise GroundTruthError(
                f"ground truth {path} has pixel values that name no class: {shown} (the class list covers "
                f"values 0..{self._num_values - 1}; check --gt-classes)"
            )
        return labels


class CocoGroundTruth(GroundTruth):
    """A COCO JSON of per-class semantic annotations (rules in the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        from pycocotools.coco import COCO

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--gt COCO file {str(self.path)!r} does not exist")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise GroundTruthError(f"cannot read COCO JSON {self.path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise GroundTruthError(f"{self.path}: a COCO JSON needs 'images' and 'categories' lists")
        data.setdefault("annotations", [])
        for image in data["images"]:
            if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
                raise GroundTruthError(f"{self.path}: every image needs id, file_name, height and width: {image!r}")
        for category in data["categories"]:
            if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not category.get("name"):
                raise GroundTruthError(f"{self.path}: every category needs an integer id and a name: {category!r}")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        names = [" ".join(str(c["name"]).split()) for c in categories]
        if not names:
            raise GroundTruthError(f"{self.path}: no categories")
        _check_distinct(names, str(self.path))
        self.class_names = tuple(names)
        self._category_index = {c["id"]: i for i, c in enumerate(categories)}
        for ann in data["annotations"]:
            if ann.get("category_id") not in self._category_index:
                raise GroundTruthError(
                    f"{self.path}: annotation {ann.get('id')!r} has category_id {ann.get('category_id')!r}, "
                    "which is not in 'categories'"
                )
            if "segmentation" not in ann:
                raise GroundTruthError(f"{self.path}: annotation {ann.get('id')!r} has no 'segmentation'")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            coco.createIndex()
        self._coco = coco
        self.description = f"COCO JSON {self.path} ({len(coco.imgs)} images, {len(names)} classes)"

    def keys(self) -> list[Hashable]:
        return list(self._coco.imgs)

    def path_of(self, key: Hashable) -> str:
        return str(self._coco.imgs[key]["file_name"])

    def read(self, key: Hashable) -> np.ndarray:
        image = self._coco.imgs[key]
        height, width = int(image["height"]), int(image["width"])
        owner = np.full((height, width), IGNORE, dtype=np.int32)
        conflict = np.zeros((height, width), dtype=bool)
        for ann in self._coco.imgToAnns.get(key, []):
            try:
                mask = self._coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises TypeError/ValueError/KeyError on malformed input
                raise GroundTruthError(
                    f"{self.path}: cannot decode annotation {ann.get('id')!r} of {image['file_name']!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if mask.shape != (height, width):
                raise GroundTruthError(
                    f"{self.path}: annotation {ann.get('id')!r} of {image['file_name']!r} has size "
                    f"{mask.shape[1]}x{mask.shape[0]}, but the image is {width}x{height}"
                )
            index = self._category_index[ann["category_id"]]
            conflict |= mask & (owner != IGNORE) & (owner != index)
            owner[mask & (owner == IGNORE)] = index
        owner[conflict] = IGNORE
        return owner


# --- registry --------------------------------------------------------------------------------------------

#: ``factory(location, gt_classes, vocabulary_names, ignore_index) -> GroundTruth`` per ``--gt`` scheme.
GroundTruthFactory = Callable[[str, "str | None", Sequence[str], int], GroundTruth]
_READERS: dict[str, GroundTruthFactory] = {}


def register_ground_truth(scheme: str, factory: GroundTruthFactory) -> None:
    """Make ``--gt SCHEME:LOCATION`` open ``factory(LOCATION, gt_classes, vocabulary_names, ignore_index)``.

    E.g. a FiftyOne reader registers ``"fiftyone"`` for ``--gt fiftyone:DATASET:FIELD``.
    """
    if not scheme.isidentifier():
        raise ValueError(f"scheme must be an identifier, got {scheme!r}")
    _READERS[scheme] = factory


def _open_png(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    names: Sequence[str | None] = read_class_names(gt_classes)[0] if gt_classes else list(vocabulary_names)
    return PngFolderGroundTruth(location, names, ignore_index)


def _open_coco(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    if gt_classes:
        raise GroundTruthError("--gt-classes does not apply to a COCO JSON (its 'categories' name the classes)")
    return CocoGroundTruth(location)


def _open_fiftyone(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    from .review import open_fiftyone_ground_truth  # imports FiftyOne only when this scheme is used

    return open_fiftyone_ground_truth(location, gt_classes, vocabulary_names, ignore_index)


register_ground_truth("png", _open_png)
register_ground_truth("coco", _open_coco)
register_ground_truth("fiftyone", _open_fiftyone)  # --gt fiftyone:DATASET[:FIELD], see pipeline.review

from .benchmarks import register_benchmark_schemes  # noqa: E402  (imports nothing back from this module)

register_benchmark_schemes(register_ground_truth)  # --gt ade150:ROOT, pc59:ROOT, ... (SAN's benchmarks)


def open_ground_truth(
    spec: str, gt_classes: str | None = None, vocabulary_names: Sequence[str] = (), ignore_index: int = 255
) -> GroundTruth:
    """Open the ground truth a ``--gt`` spec names.

    ``SCHEME:LOCATION`` with a registered scheme (``png``, ``coco``, and whatever
    :func:`register_ground_truth` added) uses that reader; otherwise a directory is a PNG folder and a
    ``.json`` file a COCO JSON.

    Raises:
        FileNotFoundError: the path does not exist.
        GroundTruthError: an unknown kind, or a reader's complaint.
    """
    scheme, sep, location = str(spec).partition(":")
    if sep and scheme in _READERS and not os.path.exists(spec):
        return _READERS[scheme](location, gt_classes, vocabulary_names, ignore_index)
    path = Path(spec)
    if path.is_dir():
        return _open_png(spec, gt_classes, vocabulary_names, ignore_index)
    if path.is_file() and path.suffix.lower() == ".json":
        return _open_coco(spec, gt_classes, vocabulary_names, ignore_index)
    if not path.exists():
        raise FileNotFoundError(f"--gt {spec!r} does not exist")
    raise GroundTruthError(
        f"--gt {spec!r} is neither a folder of label images nor a COCO .json file "
        f"(or prefix one of the schemes: {', '.join(sorted(_READERS))})"
    )
