"""What a folder listing leaves out: the job's own ``--output`` folder (an exclusion), every labeling run's folder
(it holds a ``manifest.json`` with the run's ``identity``), and hidden names; and the walks that apply it."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from ..outputs import MANIFEST, manifest_identity
from .globs import relative_parts
from .local_files import iter_local, walk_local

__all__ = [
    "Exclusion",
    "excluded",
    "hidden",
    "holds_other_files",
    "in_any",
    "is_run_folder",
    "visible_entries",
    "walk",
]

# A folder to leave out of listings: (filesystem type name, normalised path).
Exclusion = tuple[str, str] | None


def is_run_folder(fs: pafs.FileSystem, folder: str) -> bool:
    """Whether ``folder`` is a labeling run's output: it holds a ``manifest.json`` with the run's ``identity``
    (:func:`pipeline.outputs.manifest_identity`)."""
    try:
        with fs.open_input_stream(posixpath.join(folder, MANIFEST)) as handle:
            content = json.loads(handle.read())
    except (OSError, ValueError, pa.ArrowException):  # no manifest, or none of a run
        return False
    return manifest_identity(content) is not None


def excluded(fs: pafs.FileSystem, path: str, exclusion: Exclusion) -> bool:
    """Whether ``path`` (on ``fs``) is the excluded folder or lies under it."""
    if exclusion is None or fs.type_name != exclusion[0]:
        return False
    path = posixpath.normpath(path) if isinstance(fs, pafs.LocalFileSystem) else path
    return path == exclusion[1] or path.startswith(exclusion[1].rstrip("/") + "/")


def walk(
    fs: pafs.FileSystem, root: str, exclusion: Exclusion, allow_not_found: bool = False
) -> tuple[list[pafs.FileInfo], dict[str, str]]:
    """Everything under ``root`` (recursive) less labeling runs' folders and the excluded folder, and the reasons
    of entries that cannot be listed.

    Local folders: see :func:`~pipeline.label.local_files.walk_local` (links, loops, special files)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=allow_not_found))
        runs = {
            posixpath.dirname(e.path)
            for e in entries
            if e.base_name == MANIFEST and e.path != posixpath.join(root, MANIFEST)
        }
        runs = {folder for folder in runs if is_run_folder(fs, folder)}
        return [e for e in entries if not excluded(fs, e.path, exclusion) and not in_any(e.path, runs)], {}
    if allow_not_found and fs.get_file_info(root).type == pafs.FileType.NotFound:
        return [], {}
    entries, reasons = walk_local(root, skipped_folders(fs, exclusion))
    return [e for e in entries if not excluded(fs, e.path, exclusion)], reasons


def skipped_folders(fs: pafs.FileSystem, exclusion: Exclusion) -> Callable[[str], bool]:
    """Which folders a local walk does not enter: the excluded one and every labeling run's folder."""
    return lambda path: excluded(fs, path, exclusion) or is_run_folder(fs, path)


def in_any(path: str, folders: set[str]) -> bool:
    """Whether ``path`` is one of ``folders`` or lies under one."""
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def hidden(path: str, root: str) -> bool:
    """Whether ``path`` or a folder between it and ``root`` has a hidden (dot) name."""
    return any(part.startswith(".") for part in relative_parts(path, root))


def visible_entries(
    fs: pafs.FileSystem, root: str, exclusion: Exclusion, files_in_name_order: bool = True
) -> Iterator[tuple[pafs.FileInfo, str | None]]:
    """:func:`~pipeline.label.local_files.iter_local` of a local ``root``, less hidden names, labeling runs'
    folders and the excluded folder."""
    for entry, reason in iter_local(root, skipped_folders(fs, exclusion), files_in_name_order):
        if not hidden(entry.path, root) and not excluded(fs, entry.path, exclusion):
            yield entry, reason


def holds_other_files(fs: pafs.FileSystem, root: str, exclusion: Exclusion) -> bool:
    """Whether the local folder holds a visible file that is not a Parquet file or ``.tar`` shard: the walk
    stops at the first one, and takes each folder's files as they are read, so that a folder of a million
    images is never held."""
    return any(
        entry.type == pafs.FileType.File and not entry.path.endswith((".parquet", ".tar"))
        for entry, _ in visible_entries(fs, root, exclusion, files_in_name_order=False)
    )
