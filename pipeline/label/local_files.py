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
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

BROKEN_LINK = "broken symbolic link (target missing)"
LINK_LOOP = "symbolic link loop (the link leads back to itself)"
NOT_UTF8 = "name is not valid UTF-8 (its invalid bytes are shown as \\xNN): rename it to label it"
_SPECIAL_FILES = {
    stat.S_ISFIFO: "named pipe",
    stat.S_ISSOCK: "socket",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
}


def undecodable_name(path: str) -> str | None:
    """For a name that holds bytes that are not UTF-8 (which Python keeps as surrogate escapes, and no output
    format can store), the name with those bytes escaped as ``\\xNN``; ``None`` for a valid name."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


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
    """Everything :func:`iter_local` finds under ``root``, as a list, and the ``{path: reason}`` of the entries
    that cannot be followed."""
    entries: list[pafs.FileInfo] = []
    reasons: dict[str, str] = {}
    for entry, reason in iter_local(root, excluded):
        entries.append(entry)
        if reason:
            reasons[entry.path] = reason
    return entries, reasons


def iter_local(
    root: str, excluded: Callable[[str], bool], files_in_name_order: bool = True
) -> Iterator[tuple[pafs.FileInfo, str | None]]:
    """Everything under the local folder ``root``, links followed, each real folder entered once, yielded as it
    is found (a tree of millions of files is never held): ``(entry, reason)``, the reason set only for an entry
    that cannot be followed.

    Each folder's entries come in name order, its subfolders depth-first in name order. Folders reached without
    a link are walked first, so a folder inside ``root`` is listed under its real path; then the folder links,
    in order. A link to a folder already listed is not followed: it is a ``NotFound`` entry whose reason names
    the path the folder is listed under. Unreadable links are ``NotFound`` entries (reason: see
    :func:`missing_reason`, given by the caller), special files ``Unknown`` ones. An entry whose name is not
    UTF-8 is a ``NotFound`` entry under its escaped name (:func:`undecodable_name`), reason :data:`NOT_UTF8`,
    and is not entered. Folders for which ``excluded(path)`` is true are not entered.

    With ``files_in_name_order=False`` each folder yields what is not a folder first, in the order the folder
    lists it and as it is read (not even the names of a folder of a million files are held), then its folders
    and folder links in name order: the same entries under the same paths, in another order. A folder whose
    listing fails part-way then yields what was read before its ``cannot list folder`` entry.
    """
    listed = {_folder_key(root): root}  # (device, inode) of each folder entered -> the path it is listed under
    folders: list[str] = [root]  # a stack: the next folder to scan is last
    links: list[tuple[str, tuple[int, int]]] = []
    read = _in_name_order if files_in_name_order else _folders_last
    while folders or links:
        if not folders:
            path, key = links.pop(0)
            if key in listed:
                yield pafs.FileInfo(path, type=pafs.FileType.NotFound), _second_link_reason(path, listed[key])
                continue
            listed[key] = path
            yield pafs.FileInfo(path, type=pafs.FileType.Directory), None
            folders.append(path)
            continue
        folder = folders.pop()
        subfolders = []
        try:  # an error can come only from reading the folder's names: stat errors are entries of their own
            for path, is_link, info in read(folder):
                if escaped := undecodable_name(path):
                    yield pafs.FileInfo(escaped, type=pafs.FileType.NotFound), NOT_UTF8
                elif info is None:
                    yield pafs.FileInfo(path, type=pafs.FileType.NotFound), None
                elif stat.S_ISDIR(info.st_mode):
                    key = (info.st_dev, info.st_ino)
                    if excluded(path):
                        continue
                    if is_link or key in listed:  # (a real folder seen twice: a bind mount)
                        links.append((path, key))
                        continue
                    listed[key] = path
                    yield pafs.FileInfo(path, type=pafs.FileType.Directory), None
                    subfolders.append(path)
                elif stat.S_ISREG(info.st_mode):
                    yield pafs.FileInfo(path, type=pafs.FileType.File, size=info.st_size), None
                else:
                    yield pafs.FileInfo(path, type=pafs.FileType.Unknown), None
        except OSError as error:
            yield pafs.FileInfo(folder, type=pafs.FileType.NotFound), f"cannot list folder: {error.strerror}"
            continue
        folders.extend(reversed(subfolders))


def _folder_key(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _scan(folder: str) -> Iterator[os.DirEntry[str]]:
    """The entries of ``folder`` as the filesystem lists them, read lazily (a context manager, as
    :func:`os.scandir`)."""
    return os.scandir(folder)


def _stat(path: str) -> os.stat_result | None:
    """``os.stat`` of ``path`` (links followed), or ``None`` when that fails."""
    try:
        return os.stat(path)
    except OSError:
        return None


def _in_name_order(folder: str) -> Iterator[tuple[str, bool, os.stat_result | None]]:
    """``(path, is a link, stat)`` of each entry, by name; only the names are held, each entry's stat is taken
    as it is yielded."""
    with _scan(folder) as scan:
        found = sorted((entry.name, entry.is_symlink()) for entry in scan)
    for name, is_link in found:
        path = posixpath.join(folder, name)
        yield path, is_link, _stat(path)


def _folders_last(folder: str) -> Iterator[tuple[str, bool, os.stat_result | None]]:
    """``(path, is a link, stat)`` of each entry that is not a folder as it is read, then of the folders (links
    to folders too) by name: only the folders are held."""
    found = []
    with _scan(folder) as scan:
        for entry in scan:
            path, is_link = posixpath.join(folder, entry.name), entry.is_symlink()
            info = _stat(path)
            if info is not None and stat.S_ISDIR(info.st_mode):
                found.append((entry.name, is_link, info))
            else:
                yield path, is_link, info
    for name, is_link, info in sorted(found, key=lambda folder_entry: folder_entry[0]):
        yield posixpath.join(folder, name), is_link, info


def _second_link_reason(path: str, listed_as: str) -> str:
    if path.startswith(listed_as.rstrip("/") + "/"):
        return f"symbolic link loop: leads back to {listed_as} (not followed)"
    return f"link to a folder already listed as {listed_as} (not followed: each image is listed once)"
