"""Listing a local folder safely: every real folder entered once (symbolic link loops and second links to
a folder are reported, not followed), and what is not a regular file (named pipe, socket, device) named
as such, so that no reader ever opens it and waits.

Written here rather than with pyarrow's recursive ``FileSelector``: that follows folder links without
remembering where it has been (a link to ``..`` lists an image once per level until ``ELOOP``) and does
not say why a link cannot be followed.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable

import pyarrow.fs as pafs

BROKEN_LINK = "broken symbolic link (target missing)"
LINK_LOOP = "symbolic link loop (the link leads back to itself)"
_SPECIAL_FILES = {
    stat.S_ISFIFO: "named pipe",
    stat.S_ISSOCK: "socket",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
}


def missing_reason(path: str, not_found: str = "file not found") -> str:
    """Why the local ``path`` cannot be read as it is named: a link loop, a broken link, a permission
    problem, or ``not_found``."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return LINK_LOOP
        if os.path.islink(path):
            return BROKEN_LINK
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot read: {error.strerror}"
    return not_found


def not_regular_reason(path: str) -> str | None:
    """``"not a regular file (named pipe)"`` and the like for a local path that exists but is neither a
    regular file nor a folder (links followed); ``None`` otherwise. Only ``stat`` is called: never ``open``,
    which waits forever on a named pipe that no one writes to."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = next((name for test, name in _SPECIAL_FILES.items() if test(mode)), "special file")
    return f"not a regular file ({kind})"


def walk_local(root: str, excluded: Callable[[str], bool]) -> tuple[list[pafs.FileInfo], dict[str, str]]:
    """Everything under the local folder ``root``, links followed, each real folder entered once.

    Folders reached without a link are walked first, so a folder inside ``root`` is listed under its real
    path; then the folder links, in order. A link to a folder already listed is not followed: it is
    returned as a ``NotFound`` entry whose reason (in the returned ``{path: reason}``) names the path the
    folder is listed under. Unreadable links are ``NotFound`` entries (see :func:`missing_reason`), special
    files ``Unknown`` ones. Folders for which ``excluded(path)`` is true are not entered.
    """
    entries: list[pafs.FileInfo] = []
    reasons: dict[str, str] = {}
    listed = {_folder_key(root): root}  # (device, inode) of each folder entered -> the path it is listed under
    folders, links = [root], []
    while folders or links:
        if not folders:
            path, key = links.pop(0)
            if key in listed:
                entries.append(pafs.FileInfo(path, type=pafs.FileType.NotFound))
                reasons[path] = _second_link_reason(path, listed[key])
                continue
            listed[key] = path
            entries.append(pafs.FileInfo(path, type=pafs.FileType.Directory))
            folders.append(path)
            continue
        folder = folders.pop()
        try:
            scanned = _scan(folder)
        except OSError as error:
            entries.append(pafs.FileInfo(folder, type=pafs.FileType.NotFound))
            reasons[folder] = f"cannot list folder: {error.strerror}"
            continue
        for path, is_link, info in scanned:
            if info is None:
                entries.append(pafs.FileInfo(path, type=pafs.FileType.NotFound))
            elif stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if excluded(path):
                    continue
                if is_link or key in listed:  # (a real folder seen twice: a bind mount)
                    links.append((path, key))
                    continue
                listed[key] = path
                entries.append(pafs.FileInfo(path, type=pafs.FileType.Directory))
                folders.append(path)
            elif stat.S_ISREG(info.st_mode):
                entries.append(pafs.FileInfo(path, type=pafs.FileType.File, size=info.st_size))
            else:
                entries.append(pafs.FileInfo(path, type=pafs.FileType.Unknown))
    return entries, reasons


def _folder_key(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _scan(folder: str) -> list[tuple[str, bool, os.stat_result | None]]:
    """``(path, is a link, stat with links followed or None when that fails)`` of each entry, by name."""
    with os.scandir(folder) as scan:
        found = sorted((entry.name, entry.is_symlink()) for entry in scan)
    scanned = []
    for name, is_link in found:
        path = posixpath.join(folder, name)
        try:
            scanned.append((path, is_link, os.stat(path)))
        except OSError:
            scanned.append((path, is_link, None))
    return scanned


def _second_link_reason(path: str, listed_as: str) -> str:
    if path.startswith(listed_as.rstrip("/") + "/"):
        return f"symbolic link loop: leads back to {listed_as} (not followed)"
    return f"link to a folder already listed as {listed_as} (not followed: each image is listed once)"
