"""Tests for san.atomic: a file is replaced whole or not at all, and no temporary file stays behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from san.atomic import write_atomic


def test_write_replaces_the_file_with_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    assert write_atomic(target, lambda tmp: tmp.write_bytes(b"new")) == target
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_error_inside_the_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_write)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_folder_target_is_named_and_left_alone(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=rf"is a folder; give the path of a file: '{tmp_path}'"):
        write_atomic(tmp_path, lambda tmp: tmp.write_bytes(b"x"))
    assert list(tmp_path.iterdir()) == []
