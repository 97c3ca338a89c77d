"""Resolve ``--input`` into the list of images to label.

A folder, glob, list file, Parquet file(s) or WebDataset ``.tar`` shards, local or any URI pyarrow reads;
local folders of images, list files, Parquet files and shards are listed as :class:`Container` s whose images
``pipeline.label.containers`` reads in Ray tasks (millions of paths never reach the driver).
What each kind of spec means: ``docs/labeling.md``."""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from san.errors import UserError

from ..output_shards import image_id as image_id  # defined beside the readers that keep each image once
from ..outputs import MANIFEST
from .globs import glob_match, has_wildcard, relative_parts, split_glob
from .local_files import missing_reason, not_regular_reason, undecodable_name
from .walk import Exclusion, excluded, hidden, holds_other_files, is_run_folder, visible_entries, walk

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
PATH_COLUMNS = ("image_path", "path", "file_name", "filepath", "filename")
BYTES_COLUMNS = ("image_bytes", "image", "bytes", "content", "jpg", "png")
LIST_SUFFIXES = (".txt", ".lst", ".list")


class InputError(UserError):
    """An input (``--input``, a list file, a Parquet container) that names no usable images; the message says why."""


@dataclass(frozen=True)
class Container:
    """A Parquet file, WebDataset shard, list file or local folder whose images are listed lazily, in Ray tasks."""

    kind: str  # "parquet", "tar", "list" or "folder" (a local folder of images, walked in the task)
    uri: str  # as the user would write it (local path or URI)
    exclude: str = ""  # "folder": a folder the walk leaves out (the job's output), normalised; "" for none


@dataclass
class ResolvedInputs:
    """Listed image paths (``items``, read later by path) and containers expanded lazily."""

    items: list[InputItem]
    containers: list[Container]


@dataclass(frozen=True)
class InputItem:
    """One input: ``image_path`` identifies it in every output. ``data`` holds the encoded bytes when
    the source carries them (Parquet, WebDataset); ``error`` is set when it can never be labeled."""

    image_path: str
    data: bytes | None = None
    error: str | None = None


def image_fingerprint(image_path: str, data: bytes) -> str:
    """What tells whether an input changed since it was labeled: ``sha256:<hex>`` of ``data`` (an image stored in
    a Parquet file or a WebDataset shard), else ``size:<bytes>,mtime_ns:<ns>`` of a local file; ``""`` when
    unknown (a remote file, which would cost a request per image, or a file that cannot be ``stat``-ed)."""
    if data:
        return f"sha256:{hashlib.sha256(data).hexdigest()}"
    fs, path = filesystem_of(image_path)
    if not isinstance(fs, pafs.LocalFileSystem):
        return ""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f"size:{info.st_size},mtime_ns:{info.st_mtime_ns}"


def filesystem_of(spec: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path a local path or URI names.

    Raises:
        InputError: a URI that pyarrow cannot read (a scheme it has no filesystem for, such as ``http://``,
            or a malformed URI), naming it.
    """
    try:
        return pafs.FileSystem.from_uri(spec)
    except (pa.ArrowInvalid, ValueError, TypeError) as error:
        if "://" not in spec:  # a local path (pyarrow takes only absolute ones)
            return pafs.LocalFileSystem(), posixpath.abspath(spec)
        if "Unrecognized filesystem type" not in str(error):
            raise InputError(f"cannot read {spec!r}: {str(error).splitlines()[0]}") from None
        raise InputError(
            f"cannot read {spec!r}: pyarrow has no filesystem for {spec.split('://', 1)[0]}:// URIs (it reads local "
            "paths and file://, s3://, gs://, hdfs:// and abfs:// URIs); download the images and give their local path"
        ) from None


def absolute_spec(spec: str) -> str:
    """``spec`` as it reads from any folder: a relative local path or glob joined to the current folder (not
    normalised, so ``..`` after a link means what it meant); URIs and absolute paths unchanged."""
    return spec if "://" in spec or posixpath.isabs(spec) else posixpath.join(os.getcwd(), spec)


def display_name(spec: str, fs: pafs.FileSystem, path: str) -> str:
    """The path as the user would write it: local paths as given, URIs with their scheme."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = spec.split("://", 1)[0]
    return f"{scheme}://{path}"


def check_outside_runs(spec: str, output: str) -> None:
    """Refuse an ``--input`` folder (or a glob's folder) that is ``output``, lies in it, or lies in another labeling
    run's folder: a run's folder is never listed (see :func:`resolve_inputs`), so nothing of it could be labeled.

    Raises:
        InputError: naming the run folder and the way forward.
    """
    base = split_glob(spec)[0] if has_wildcard(spec) else spec
    fs, path = filesystem_of(base)
    if not isinstance(fs, pafs.LocalFileSystem):
        if excluded(fs, path, exclusion_of(output)):
            raise InputError(_inside_run_message(spec, f"the `output` folder {output}"))
        return
    if not has_wildcard(spec) and not posixpath.isdir(path):
        return  # a file names its images itself
    output_path = posixpath.realpath(output)
    folder = posixpath.realpath(path)
    while True:
        if folder == output_path:
            raise InputError(_inside_run_message(spec, f"the `output` folder {output}"))
        if is_run_folder(fs, folder):
            raise InputError(_inside_run_message(spec, f"the labeling run folder {folder} (it has {MANIFEST})"))
        if folder == posixpath.dirname(folder):
            return
        folder = posixpath.dirname(folder)


def _inside_run_message(spec: str, run: str) -> str:
    return (
        f"`input` {spec!r} is or lies in {run}: a labeling run's folder is never listed as input (its files are "
        "labels, not images); give an `input` outside it, or an `output` outside the `input` folder"
    )


def exclusion_of(exclude: str | None) -> Exclusion:
    """``exclude`` as (filesystem type, normalised path without a trailing slash), or ``None``."""
    if exclude is None:
        return None
    fs, path = filesystem_of(exclude)
    return fs.type_name, posixpath.normpath(path) if isinstance(fs, pafs.LocalFileSystem) else path.rstrip("/")


def resolve_inputs(spec: str, *, exclude: str | None = None, bytes_column: str | None = None) -> ResolvedInputs:
    """Every input ``spec`` names, in a deterministic order (sorted within each listing).

    Folder walks and globs never enter a labeling run's folder (:func:`is_run_folder`) below ``spec``, nor
    ``exclude``: a run's own files (labels, review masks) are never inputs.

    Args:
        spec: a folder, glob, list file, Parquet file/folder or WebDataset shard(s) (``docs/labeling.md``).
        exclude: a folder (local path or URI) whose contents folder walks and globs leave out, such as
            the job's output folder when it lies inside the input folder (before it holds a manifest).
        bytes_column: the ``--bytes-column`` the containers will be expanded with (``None``: detect).

    Raises:
        InputError: ``spec`` is not valid UTF-8; ``spec`` does not exist (or, as a glob, matches no file);
            a URI of a scheme pyarrow does not read (such as ``http://``); nothing to label in it; an
            unreadable list file; the first Parquet file has neither a path nor an image-bytes column.
    """
    if escaped := undecodable_name(spec):
        raise InputError(f"`input` {escaped!r} is not valid UTF-8 (its invalid bytes are shown as \\xNN): rename it")
    resolved = ResolvedInputs([], [])
    for entry in _iter_entries(spec, exclusion_of(exclude)):
        if isinstance(entry, Container):
            resolved.containers.append(entry)
        else:
            resolved.items.append(entry)
    if not resolved.items and not resolved.containers:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(
            f"no images found in {spec!r}: accepted are image files ({accepted}), Parquet files and .tar shards"
        )
    parquets = [c for c in resolved.containers if c.kind == "parquet"]
    if parquets:
        _check_parquet_schema(parquets[0], bytes_column)
    return resolved


def _missing_reason(fs: pafs.FileSystem, path: str, not_found: str = "file not found") -> str:
    """Why a path that was named cannot be found: for a local path, a broken link or a link loop too."""
    return missing_reason(path, not_found) if isinstance(fs, pafs.LocalFileSystem) else not_found


def _not_regular_reason(fs: pafs.FileSystem, path: str) -> str:
    """Why an entry that is neither a file nor a folder is not read (for a local path, what it is)."""
    local = not_regular_reason(path) if isinstance(fs, pafs.LocalFileSystem) else None
    return local or "not a regular file"


def _iter_entries(spec: str, exclusion: Exclusion) -> Iterator[InputItem | Container]:
    fs, path = _locate(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        if has_wildcard(spec):
            yield from _iter_glob(spec, exclusion)
            return
        raise InputError(f"`input` {spec!r} does not exist")
    if info.type == pafs.FileType.Directory:
        yield from _iter_directory(spec, fs, path, exclusion)
        return
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield Container("parquet", display_name(spec, fs, path))
    elif lower.endswith(".tar"):
        yield Container("tar", display_name(spec, fs, path))
    elif lower.endswith(LIST_SUFFIXES):
        yield Container("list", display_name(spec, fs, path))
    else:
        yield from _classify(spec, fs, [info])


def _locate(spec: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path ``spec`` names literally; with wildcards, the URI is parsed up to the
    first wildcard only (so a ``?`` is never read as a URI query)."""
    if not has_wildcard(spec):
        return filesystem_of(spec)
    base, pattern = split_glob(spec)
    fs, base_path = filesystem_of(base)
    return fs, posixpath.join(base_path, *pattern)


def _iter_directory(spec: str, fs: pafs.FileSystem, path: str, exclusion: Exclusion) -> Iterator[InputItem | Container]:
    """A folder's images (or its Parquet files / ``.tar`` shards when it holds nothing else), no hidden names.

    A local folder that holds an image is one ``"folder"`` container, walked inside a Ray task (see
    :func:`iter_folder`): only the walk up to its first such file happens here."""
    if isinstance(fs, pafs.LocalFileSystem) and holds_other_files(fs, path, exclusion):
        left_out = exclusion[1] if exclusion is not None and not excluded(fs, path, exclusion) else ""
        yield Container("folder", display_name(spec, fs, path), left_out)
        return
    entries, reasons = walk(fs, path, exclusion)
    entries = [e for e in entries if not hidden(e.path, path)]
    files = sorted(e.path for e in entries if e.type == pafs.FileType.File and not e.base_name.startswith("."))
    kind = next((k for k in ("parquet", "tar") if files and all(f.endswith(f".{k}") for f in files)), None)
    if kind is None:
        yield from _classify(spec, fs, entries, reasons)
        return
    yield from (Container(kind, display_name(spec, fs, f)) for f in files)
    yield from _classify(spec, fs, [e for e in entries if e.type == pafs.FileType.NotFound], reasons)


def iter_folder(container: Container) -> Iterator[InputItem]:
    """The images (and error rows) of a ``"folder"`` container, as the walk finds them: each folder's entries
    in name order, subfolders depth-first in name order, folder links last (see
    :func:`~pipeline.label.local_files.iter_local`)."""
    fs, path = filesystem_of(container.uri)
    exclusion = (fs.type_name, container.exclude) if container.exclude else None
    for entry, reason in visible_entries(fs, path, exclusion):
        yield from _classify(container.uri, fs, [entry], {entry.path: reason} if reason else None)


def _classify(
    spec: str, fs: pafs.FileSystem, entries: list[pafs.FileInfo], reasons: dict[str, str] | None = None
) -> Iterator[InputItem]:
    """Each entry as an image to label or, with the reason, as an error row (``reasons``: those a listing
    gave for entries that cannot be followed)."""
    for entry in sorted(entries, key=lambda e: e.path):
        name = display_name(spec, fs, entry.path)
        if entry.base_name.startswith("."):
            continue
        suffix = posixpath.splitext(entry.base_name)[1].lower()
        if entry.type == pafs.FileType.NotFound:  # listed without a target: a link that cannot be followed
            yield InputItem(name, error=(reasons or {}).get(entry.path) or _missing_reason(fs, entry.path))
        elif entry.type == pafs.FileType.Unknown:  # a named pipe, socket or device: never to be opened
            yield InputItem(name, error=_not_regular_reason(fs, entry.path))
        elif entry.type == pafs.FileType.Directory:
            if suffix in IMAGE_EXTENSIONS:
                yield InputItem(name, error="is a directory, not an image file")
        elif suffix in IMAGE_EXTENSIONS:
            yield InputItem(name)
        else:
            yield InputItem(name, error=f"not an image file (extension {suffix or 'none'!r})")


def _iter_glob(spec: str, exclusion: Exclusion) -> Iterator[InputItem | Container]:
    base, pattern = split_glob(spec)
    fs, base_path = filesystem_of(base)
    entries, reasons = walk(fs, base_path, exclusion, allow_not_found=True)
    matches = sorted(
        (e for e in entries if glob_match(relative_parts(e.path, base_path), pattern)), key=lambda e: e.path
    )
    if not matches:
        raise InputError(f"`input` pattern {spec!r} matches no file")
    for entry in matches:
        if entry.type == pafs.FileType.File and entry.path.endswith((".tar", ".parquet")):
            yield Container(entry.path.rsplit(".", 1)[1], display_name(spec, fs, entry.path))
        else:
            yield from _classify(base, fs, [entry], reasons)


def resolve_entry(entry: str, spec: str, fs: pafs.FileSystem, folder: str) -> tuple[pafs.FileSystem, str, str]:
    """A path named inside a list or Parquet file -> (filesystem, path on it, name shown in outputs).

    URIs and absolute paths stand as written; relative paths are taken from ``folder`` on ``fs``, the
    folder of the file that names them (``spec`` gives the scheme to show them with)."""
    if "://" in entry or posixpath.isabs(entry):
        target_fs, target = filesystem_of(entry)
        return target_fs, target, entry
    target = posixpath.normpath(posixpath.join(folder, entry))
    return fs, target, display_name(spec, fs, target)


def lookup_entry(name: str, fs: pafs.FileSystem, target: str, not_found: str = "file not found") -> Iterator[InputItem]:
    """The item for a named path: an error when it is missing, else as a folder listing classifies it."""
    info = fs.get_file_info(target)
    if info.type == pafs.FileType.NotFound:
        yield InputItem(name, error=_missing_reason(fs, target, not_found))
    else:
        yield from (InputItem(name, item.data, item.error) for item in _classify(name, fs, [info]))


def parquet_columns(shown: str, names: list[str], bytes_column: str | None) -> tuple[str | None, str | None]:
    """The (path column, image-bytes column) of a Parquet schema's ``names``; at least one is set.

    Raises:
        InputError: ``bytes_column`` is not among ``names``, or neither kind of column is found.
    """
    present = set(names)
    path_col = next((c for c in PATH_COLUMNS if c in present), None)
    data_col = bytes_column if bytes_column else next((c for c in BYTES_COLUMNS if c in present), None)
    if data_col is not None and data_col not in present:
        raise InputError(f"{shown}: no column {data_col!r} (columns: {sorted(present)})")
    if path_col is None and data_col is None:
        raise InputError(
            f"{shown}: needs a path column {PATH_COLUMNS} or an image-bytes column {BYTES_COLUMNS}; "
            f"found {sorted(present)}"
        )
    return path_col, data_col


def _check_parquet_schema(container: Container, bytes_column: str | None = None) -> None:
    """Fail early, on the driver, when a Parquet container has no usable path or image-bytes column.

    With ``bytes_column`` unknown (``None``), a schema without the usual columns passes as long as it has
    a binary column that ``--bytes-column`` may name: callers that do not pass it keep working."""
    fs, path = filesystem_of(container.uri)
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{container.uri}: not a readable Parquet file ({exc})") from None
    if bytes_column is None and any(_may_hold_bytes(field.type) for field in schema):
        return
    parquet_columns(container.uri, schema.names, bytes_column)


def _may_hold_bytes(dtype: pa.DataType) -> bool:
    """Whether a column of this type can hold encoded images (binary, or a ``{"bytes", "path"}`` struct)."""
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_struct(dtype)


def read_bytes(image_path: str) -> bytes:
    """The bytes of a local path or URI (raises ``OSError`` subclasses when unreadable)."""
    fs, path = filesystem_of(image_path)
    special = not_regular_reason(path) if isinstance(fs, pafs.LocalFileSystem) else None
    if special:  # a path that became a named pipe after it was listed: opening it would wait forever
        raise OSError(special)
    with fs.open_input_file(path) as handle:
        return handle.read()
