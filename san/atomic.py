"""Atomic file writes: a file appears whole (new content) or not at all (old content), never half-written."""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(target: str | os.PathLike[str], write: Callable[[Path], object], kind: str = "file") -> Path:
    """Make ``target`` the file that ``write(path)`` writes, atomically.

    ``write`` creates and fills a temporary file in ``target``'s folder (``.NAME.<random>.tmp``; any
    writer that takes a path: ``json.dump`` into ``open(path, "x")``, ``safetensors.torch.save_file``,
    ``torch.save``, ``pyarrow.parquet.write_table``, ``os.link``). The temporary file is then fsynced and
    ``os.replace``d onto ``target``, and the folder is fsynced where the OS allows. On any failure the
    temporary file is removed and ``target`` is left as it was. The file keeps the permissions the writer
    created it with (``0o666`` less the umask for ``open``, ``torch.save`` and Parquet).

    Raises:
        IsADirectoryError: ``target`` is a folder (naming ``target``; ``kind`` says what it should be,
            e.g. ``".json file"``).
    """
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a folder; give the path of a {kind}", str(target))
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], indent: int | None = None) -> None:
    """Write ``obj`` as UTF-8 JSON so that ``path`` is either the old file or the complete new one
    (:func:`write_atomic`). NaN/Infinity are rejected (``ValueError``) because they are not valid JSON.
    """

    def dump(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8") as f:
            separators = (",", ":") if indent is None else None
            json.dump(obj, f, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators)

    write_atomic(path, dump, kind=".json file")
