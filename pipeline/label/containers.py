"""Expand the job's containers, inside Ray tasks: the images of a local folder, Parquet file, WebDataset shard or
list file.

A local folder (one that holds images, listed by :func:`pipeline.label.inputs.iter_folder` in a task, so that
millions of paths never reach the driver) gives each image file under it. A Parquet file gives each row's image
bytes (from its image-bytes column, or a Hugging Face ``{"bytes", "path"}`` struct) or, with only a path column,
the file each row names (relative paths are taken from the Parquet file's folder, as in list files). A
WebDataset ``.tar`` shard gives each sample's first image member (one whose name is not UTF-8 is an error row).
``pipeline.label.inputs`` lists the containers and checks the first Parquet schema up front, on the driver.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .inputs import (
    IMAGE_EXTENSIONS,
    Container,
    InputError,
    InputItem,
    display_name,
    filesystem_of,
    iter_folder,
    lookup_entry,
    parquet_columns,
    resolve_entry,
)
from .local_files import NOT_UTF8, undecodable_name


def expand_container(container: Container, bytes_column: str | None = None, once: bool = True) -> Iterator[InputItem]:
    """The images inside a Parquet file (with their bytes, or their paths), a WebDataset shard, a list file or a
    local folder. ``once=False`` gives a list file's paths as often as it names them, holding nothing per path
    (for a reader that looks for paths it knows, :func:`pipeline.run_images.iter_run_images`): the labeling job
    names each once, which holds every path named so far.

    Raises:
        InputError: a list file that is not UTF-8 (naming its line) or names no path.
    """
    fs, path = filesystem_of(container.uri)
    if container.kind == "parquet":
        yield from _iter_parquet(container.uri, fs, path, bytes_column)
    elif container.kind == "list":
        yield from _iter_list(container.uri, fs, path, once)
    elif container.kind == "folder":
        yield from iter_folder(container)
    else:
        yield from _iter_tar(container.uri, fs, path)


def _iter_list(spec: str, fs: pafs.FileSystem, path: str, once: bool = True) -> Iterator[InputItem]:
    """A list file's entries in order, each named once (the first spelling of a path is kept; ``once=False``: as
    often as the list names it), read line by line: only the keys of the paths named so far are held, never the
    list."""
    shown = display_name(spec, fs, path)
    folder = posixpath.dirname(path)
    seen: set[str] = set()
    named = False
    for entry in _list_entries(shown, fs, path):
        named = True
        try:
            target_fs, target, name = resolve_entry(entry, spec, fs, folder)
        except InputError as unreadable:  # a URI pyarrow cannot read: an error row, the list goes on
            if entry not in seen:
                if once:
                    seen.add(entry)
                yield InputItem(entry, error=str(unreadable))
            continue
        key = posixpath.normpath(target) if isinstance(target_fs, pafs.LocalFileSystem) else name
        if key not in seen:
            if once:
                seen.add(key)
            yield from lookup_entry(name, target_fs, target)
    if not named:
        raise InputError(f"no images found in {shown!r}: the list names no path (only blank lines and comments)")


def _list_entries(shown: str, fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """The entries of a UTF-8 list file: stripped lines, without blank lines and ``#`` comments."""
    offset = 0
    with fs.open_input_stream(path) as stream:
        for number, line in enumerate(io.BufferedReader(stream), start=1):
            try:
                entry = line.decode("utf-8").removeprefix("\ufeff" if number == 1 else "").strip()
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                raise InputError(
                    f"{shown}:{number}: not valid UTF-8 (byte 0x{byte:02x} at offset {offset + exc.start})"
                ) from None
            offset += len(line)
            if entry and not entry.startswith("#"):
                yield entry


def _iter_parquet(spec: str, fs: pafs.FileSystem, path: str, bytes_column: str | None) -> Iterator[InputItem]:
    shown = display_name(spec, fs, path)
    path_col, data_col = parquet_columns(shown, pq.read_schema(path, filesystem=fs).names, bytes_column)
    folder = posixpath.dirname(path)
    parquet = pq.ParquetFile(path, filesystem=fs)
    row = 0
    for batch in parquet.iter_batches(columns=[c for c in (path_col, data_col) if c], batch_size=256):
        paths = batch.column(path_col).to_pylist() if path_col else [None] * batch.num_rows
        datas = batch.column(data_col).to_pylist() if data_col else [None] * batch.num_rows
        for image_path, data in zip(paths, datas, strict=True):
            if isinstance(data, dict):  # Hugging Face datasets' Image feature: {"bytes", "path"}
                image_path, data = image_path or data.get("path"), data.get("bytes")
            name = image_path if image_path else f"{shown}#{row}"
            row += 1
            if data_col is None:
                yield from _iter_parquet_path(name, spec, fs, folder)
            elif data is None:
                yield InputItem(name, error=f"empty {data_col!r} value")
            else:
                yield InputItem(name, data=data)


def _iter_parquet_path(entry: str, spec: str, fs: pafs.FileSystem, folder: str) -> Iterator[InputItem]:
    """A path-only Parquet row: relative paths are taken from the Parquet file's folder, as in list files."""
    try:
        target_fs, target, name = resolve_entry(entry, spec, fs, folder)
    except InputError as unreadable:  # a URI pyarrow cannot read: an error row, the file goes on
        yield InputItem(entry, error=str(unreadable))
        return
    not_found = "file not found"
    if name != entry:  # relative: say where it was looked for
        not_found = f"file not found: {name} ({entry!r} taken from the Parquet file's folder)"
    yield from lookup_entry(name, target_fs, target, not_found)


def _iter_tar(spec: str, fs: pafs.FileSystem, path: str) -> Iterator[InputItem]:
    """WebDataset shards: each sample's first image member (``key.jpg``, ``key.png``, ...)."""
    shown = display_name(spec, fs, path)
    seen: set[str] = set()
    with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, base = posixpath.split(member.name)
            key, suffix = posixpath.join(folder, base.split(".", 1)[0]), posixpath.splitext(base)[1]
            if suffix.lower() not in IMAGE_EXTENSIONS or key in seen:
                continue
            seen.add(key)
            if escaped := undecodable_name(member.name):
                yield InputItem(f"{shown}/{escaped}", error=NOT_UTF8)
                continue
            handle = tar.extractfile(member)
            yield InputItem(f"{shown}/{member.name}", data=handle.read() if handle else b"")
