"""Tests for san.text_files: the class-name file format shared by training data, ground truth and benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest

from san.text_files import parse_class_names, read_class_names


def test_gaps_keep_line_numbers_aligned_with_values() -> None:
    text = "\ufeffcat\n\n# other\n  traffic   light \r\n\n#\n"
    assert parse_class_names(text, "c.txt") == ["cat", None, None, "traffic light"]


def test_errors_name_the_file_and_lines(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^c\.txt:4: class 'cat' is also on line 1$"):
        parse_class_names("cat\ndog\n\n cat\n", "c.txt")
    with pytest.raises(ValueError, match=r"^c\.txt:3: class 'Cat' is also on line 1 as 'cat'$"):
        parse_class_names("cat\ndog\nCat\n", "c.txt")
    nfc, nfd = "caf\u00e9", "cafe\u0301"  # one name in Unicode NFC and NFD
    with pytest.raises(ValueError, match=rf"^c\.txt:2: class '{nfd}' is also on line 1 as '{nfc}' \(the same letters"):
        parse_class_names(f"{nfc}\n{nfd}\n", "c.txt")
    with pytest.raises(ValueError, match=r"^c\.txt: no class names"):
        parse_class_names("\n# x\n", "c.txt")
    path = tmp_path / "classes.txt"
    path.write_bytes(b"cat\ndog\nb\xffd\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xff"):
        read_class_names(path)
    with pytest.raises(FileNotFoundError):
        read_class_names(tmp_path / "missing.txt")
