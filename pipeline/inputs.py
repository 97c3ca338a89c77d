"""Resolve ``--input`` into the list of images to label.

Accepted: a directory (searched recursively), a glob pattern, a text file of paths (one per line,
relative paths taken from the list's folder), a Parquet file or folder of Parquet files with a path
column and/or an image-bytes column, or WebDataset ``.tar`` shards (a file, a folder of them, or a
glob). Local paths and any URI pyarrow's filesystems understand (``s3://``, ``gs://``, ...) work.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
PATH_COLUMNS = ("image_path", "path", "file_name", "filepath", "filename")
BYTES_COLUMNS = ("image_bytes", "image", "bytes", "content", "jpg", "png")
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Container:
    """A Parquet file or WebDataset shard whose images are read lazily, inside Ray tasks."""

    kind: str  # "parquet" or "tar"
    uri: str  # as the user would write it (local path or URI)


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


def image_id(image_path: str) -> int:
    """A stable positive id (< 2**53, exact in JSON and JavaScript) derived from the path."""
    return int.from_bytes(hashlib.sha256(image_path.encode("utf-8")).digest()[:8], "big") >> 11


def _filesystem(spec: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(spec)
    except (pa.ArrowInvalid, ValueError, TypeError):
        return pafs.LocalFileSystem(), posixpath.abspath(spec) if "://" not in spec else spec


def _display(spec: str, fs: pafs.FileSystem, path: str) -> str:
    """The path as the user would write it: local paths as given, URIs with their scheme."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = spec.split("://", 1)[0]
    return f"{scheme}://{path}"


def _has_wildcard(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def resolve_inputs(spec: str) -> ResolvedInputs:
    """Every input ``spec`` names, in a deterministic order (sorted within each listing)."""
    resolved = ResolvedInputs([], [])
    for entry in _iter_entries(spec):
        if isinstance(entry, Container):
            resolved.containers.append(entry)
        else:
            resolved.items.append(entry)
    return resolved


def expand_container(container: Container, bytes_column: str | None = None) -> Iterator[InputItem]:
    """The images inside a Parquet file (with their bytes, or their paths) or a WebDataset shard."""
    fs, path = _filesystem(container.uri)
    if container.kind == "parquet":
        yield from _iter_parquet(container.uri, fs, path, bytes_column)
    else:
        yield from _iter_tar(container.uri, fs, path)


def _iter_entries(spec: str) -> Iterator[InputItem | Container]:
    if _has_wildcard(spec):
        yield from _iter_glob(spec)
        return
    fs, path = _filesystem(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"--input {spec!r} does not exist")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        entries = [e for e in entries if not any(p.startswith(".") for p in _relative_parts(e.path, path))]
        files = sorted(e.path for e in entries if e.type == pafs.FileType.File and not e.base_name.startswith("."))
        if files and all(f.endswith(".parquet") for f in files):
            yield from (Container("parquet", _display(spec, fs, f)) for f in files)
        elif files and all(f.endswith(".tar") for f in files):
            yield from (Container("tar", _display(spec, fs, f)) for f in files)
        else:
            yield from _classify(spec, fs, entries)
        return
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield Container("parquet", _display(spec, fs, path))
    elif lower.endswith(".tar"):
        yield Container("tar", _display(spec, fs, path))
    elif lower.endswith(LIST_SUFFIXES):
        yield from _iter_list(spec, fs, path)
    else:
        yield from _classify(spec, fs, [info])


def _classify(spec: str, fs: pafs.FileSystem, entries: list[pafs.FileInfo]) -> Iterator[InputItem]:
    for entry in sorted(entries, key=lambda e: e.path):
        name = _display(spec, fs, entry.path)
        if entry.base_name.startswith("."):
            continue
        suffix = posixpath.splitext(entry.base_name)[1].lower()
        if entry.type == pafs.FileType.Directory:
            if suffix in IMAGE_EXTENSIONS:
                yield InputItem(name, error="is a directory, not an image file")
        elif suffix in IMAGE_EXTENSIONS:
            yield InputItem(name)
        else:
            yield InputItem(name, error=f"not an image file (extension {suffix or 'none'!r})")


def _iter_glob(spec: str) -> Iterator[InputItem | Container]:
    parts = spec.split("/")
    first_wild = next(i for i, p in enumerate(parts) if _has_wildcard(p))
    base = "/".join(parts[:first_wild]) or "."
    fs, base_path = _filesystem(base)
    pattern = [p for p in parts[first_wild:] if p]
    entries = fs.get_file_info(pafs.FileSelector(base_path, recursive=True, allow_not_found=True))
    matches = sorted(
        (e for e in entries if _glob_match(_relative_parts(e.path, base_path), pattern)), key=lambda e: e.path
    )
    if not matches:
        raise FileNotFoundError(f"--input pattern {spec!r} matches no file")
    for entry in matches:
        if entry.type == pafs.FileType.File and entry.path.endswith((".tar", ".parquet")):
            yield Container(entry.path.rsplit(".", 1)[1], _display(spec, fs, entry.path))
        else:
            yield from _classify(base, fs, [entry])


def _relative_parts(path: str, root: str) -> list[str]:
    rel = path[len(root) :] if path.startswith(root) else path
    return [p for p in rel.split("/") if p]


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Shell-glob semantics per path component: ``*`` stays within one folder, ``**`` spans zero or more
    folders, and wildcards do not match hidden (dot) names unless the pattern component starts with a dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        descend = bool(parts) and not parts[0].startswith(".") and _glob_match(parts[1:], pattern)
        return descend or _glob_match(parts, rest)
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(parts[1:], rest)


def _iter_list(spec: str, fs: pafs.FileSystem, path: str) -> Iterator[InputItem]:
    with fs.open_input_stream(path) as stream:
        text = stream.read().decode("utf-8")
    folder = posixpath.dirname(path)
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry or posixpath.isabs(entry):
            target_fs, target = _filesystem(entry)
            shown = entry
        else:
            target_fs, target = fs, posixpath.normpath(posixpath.join(folder, entry))
            shown = _display(spec, fs, target)
        info = target_fs.get_file_info(target)
        if info.type == pafs.FileType.NotFound:
            yield InputItem(shown, error="file not found")
        else:
            yield from (InputItem(shown, item.data, item.error) for item in _classify(spec, target_fs, [info]))


def _iter_parquet(spec: str, fs: pafs.FileSystem, path: str, bytes_column: str | None) -> Iterator[InputItem]:
    shown = _display(spec, fs, path)
    schema = pq.read_schema(path, filesystem=fs)
    names = set(schema.names)
    path_col = next((c for c in PATH_COLUMNS if c in names), None)
    data_col = bytes_column if bytes_column else next((c for c in BYTES_COLUMNS if c in names), None)
    if data_col is not None and data_col not in names:
        raise ValueError(f"{shown}: no column {data_col!r} (columns: {sorted(names)})")
    if path_col is None and data_col is None:
        raise ValueError(
            f"{shown}: needs a path column {PATH_COLUMNS} or an image-bytes column {BYTES_COLUMNS}; "
            f"found {sorted(names)}"
        )
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
                yield from _iter_list_entry(name)
            elif data is None:
                yield InputItem(name, error=f"empty {data_col!r} value")
            else:
                yield InputItem(name, data=data)


def _iter_list_entry(entry: str) -> Iterator[InputItem]:
    fs, target = _filesystem(entry)
    info = fs.get_file_info(target)
    if info.type == pafs.FileType.NotFound:
        yield InputItem(entry, error="file not found")
    else:
        yield from (InputItem(entry, item.data, item.error) for item in _classify(entry, fs, [info]))


def _iter_tar(spec: str, fs: pafs.FileSystem, path: str) -> Iterator[InputItem]:
    """WebDataset shards: each sample's first image member (``key.jpg``, ``key.png``, ...)."""
    shown = _display(spec, fs, path)
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
            handle = tar.extractfile(member)
            yield InputItem(f"{shown}/{member.name}", data=handle.read() if handle else b"")


def read_bytes(image_path: str) -> bytes:
    """The bytes of a local path or URI (raises ``OSError`` subclasses when unreadable)."""
    fs, path = _filesystem(image_path)
    with fs.open_input_file(path) as handle:
        return handle.read()
