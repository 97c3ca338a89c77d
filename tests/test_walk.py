"""``holds_other_files``: the driver's look for a file that is neither a Parquet file nor a ``.tar`` shard, which
stops at the first one and never holds a folder's listing; and what the local walk holds (no Ray)."""

from __future__ import annotations

import errno
import itertools
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.label import local_files
from pipeline.label.local_files import iter_local
from pipeline.label.walk import holds_other_files, visible_entries

FS = pafs.LocalFileSystem()


def _file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _run_folder(folder: Path) -> None:
    _file(folder / "predictions" / "part-0.parquet")
    (folder / "manifest.json").write_text(json.dumps({"status": "complete", "identity": {"model": "x"}}))
    _file(folder / "review-masks" / "1.png")


def _outside(root: Path) -> Path:
    """A folder beside ``root`` holding one image, for links to lead to."""
    _file(root.parent / "outside" / "o.jpg")
    return root.parent / "outside"


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


# Each case builds the folder's content under ``root`` (the folder ``root/out`` is the excluded one).
CASES: dict[str, tuple[Callable[[Path], None], bool]] = {
    "an image": (lambda root: _file(root / "a.jpg"), True),
    "a file of any other kind": (lambda root: _file(root / "notes.txt"), True),
    "an image in a subfolder": (lambda root: [_file(root / "p.parquet"), _file(root / "s" / "t" / "a.jpg")], True),
    "only parquet and tar files": (lambda root: [_file(root / "a.parquet"), _file(root / "s" / "b.tar")], False),
    "nothing": (lambda root: (root / "empty").mkdir(), False),
    "a hidden file only": (lambda root: _file(root / ".a.jpg"), False),
    "a file only inside a hidden folder": (lambda root: _file(root / ".git" / "objects" / "ab12"), False),
    "a file only inside a labeling run's folder": (lambda root: _run_folder(root / "labels-v1"), False),
    "a file only inside the excluded folder": (lambda root: _file(root / "out" / "coco.json"), False),
    "a broken link only": (lambda root: (root / "gone.jpg").symlink_to(root / "nowhere.jpg"), False),
    "a file link loop only": (lambda root: (root / "self.jpg").symlink_to(root / "self.jpg"), False),
    "a folder link loop only": (lambda root: [_file(root / "a.tar"), (root / "up").symlink_to(".")], False),
    "a named pipe only": (lambda root: _fifo(root / "sub" / "pipe.jpg"), False),
    "a link to an image": (lambda root: (root / "l.jpg").symlink_to(_outside(root) / "o.jpg"), True),
    "a link to a folder of images": (lambda root: (root / "l").symlink_to(_outside(root)), True),
    # the first link by name is followed, under its (hidden) path; the second is not followed
    "a hidden and a visible link to one folder": (
        lambda root: [(root / ".a").symlink_to(_outside(root)), (root / "b").symlink_to(_outside(root))],
        False,
    ),
    "a file only inside a folder whose name is not UTF-8": (
        lambda root: _file(Path(os.fsdecode(bytes(root) + b"/bad\xfe/a.jpg"))),
        False,
    ),
    "a file whose name is not UTF-8 only": (lambda root: _file(Path(os.fsdecode(bytes(root) + b"/a\xfe.jpg"))), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_holds_other_files_answers_as_the_whole_walk_does(tmp_path: Path, case: str) -> None:
    """The answer is the one a full walk in name order gives: hidden names, labeling runs' folders and the
    excluded folder left out, links followed once, broken links, loops, special files and names that are not
    UTF-8 not counted."""
    build, expected = CASES[case]
    root = tmp_path / "root"
    root.mkdir()
    build(root)
    exclusion = (FS.type_name, str(root / "out"))
    walked = [entry for entry, _ in visible_entries(FS, str(root), exclusion)]
    assert any(e.type == pafs.FileType.File and not e.path.endswith((".parquet", ".tar")) for e in walked) == expected
    assert holds_other_files(FS, str(root), exclusion) == expected


@pytest.mark.parametrize(("suffix", "expected"), [(".jpg", True), (".parquet", False)])
def test_holds_other_files_never_holds_a_folders_listing(tmp_path: Path, suffix: str, expected: bool) -> None:
    """A flat folder of 20,000 files: looked through one entry at a time, whether the first file answers or
    all must be seen (about 920 bytes an entry were held before, 18 MB here)."""
    for i in range(20_000):
        os.close(os.open(tmp_path / f"{i:05d}{suffix}", os.O_CREAT | os.O_WRONLY, 0o644))
    tracemalloc.start()
    try:
        assert holds_other_files(FS, str(tmp_path), None) == expected
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000, f"{peak} bytes held"


def test_a_walk_in_name_order_holds_only_each_folders_names(tmp_path: Path) -> None:
    """The ordered walk sorts a folder's names and links, and takes each entry's stat as it yields it (about 130
    bytes an entry held, not the 920 of a stat and a path each)."""
    for i in range(20_000):
        os.close(os.open(tmp_path / f"{i:05d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    tracemalloc.start()
    try:
        assert sum(1 for _ in iter_local(str(tmp_path), lambda path: False)) == 20_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000 * 300, f"{peak} bytes held"


class _FailingScan:
    """``os.scandir`` of a folder whose listing fails after its first two entries."""

    def __init__(self, folder: str) -> None:
        self._scan = os.scandir(folder)

    def __enter__(self) -> _FailingScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self._scan.close()

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        yield from itertools.islice(self._scan, 2)
        raise OSError(errno.EIO, "I/O error")


@pytest.mark.parametrize("files_in_name_order", [True, False])
def test_a_folder_whose_listing_fails_part_way_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files_in_name_order: bool
) -> None:
    """In name order nothing of the folder is yielded but its error; files first, what was read before it."""
    for name in ["a.jpg", "b.jpg", "c.jpg"]:
        _file(tmp_path / name)
    monkeypatch.setattr(local_files, "_scan", _FailingScan)
    found = list(iter_local(str(tmp_path), lambda path: False, files_in_name_order))
    (entry, reason) = found[-1]
    assert (entry.path, entry.type, reason) == (str(tmp_path), pafs.FileType.NotFound, "cannot list folder: I/O error")
    assert len(found) == (1 if files_in_name_order else 3)
    assert all(entry.type == pafs.FileType.File for entry, _ in found[:-1])
