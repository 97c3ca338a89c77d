"""Resolving ``--input``: folders, globs, list files, Parquet and WebDataset shards (no Ray)."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.label import local_files
from pipeline.label.containers import expand_container
from pipeline.label.inputs import (
    Container,
    InputError,
    InputItem,
    ResolvedInputs,
    image_id,
    read_bytes,
    resolve_inputs,
)
from pipeline.label.local_files import BROKEN_LINK, LINK_LOOP, NOT_UTF8


def _encode(fmt: str = "PNG", seed: int = 0, size: tuple[int, int] = (6, 4)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG", seed))
    return path


def _listed(resolved: ResolvedInputs) -> list[InputItem]:
    """The listed items, and those of list files and folders (which the job expands in Ray tasks)."""
    lazy = [c for c in resolved.containers if c.kind in ("list", "folder")]
    return [*resolved.items, *(item for c in lazy for item in expand_container(c))]


def _paths(resolved: ResolvedInputs) -> list[str]:
    return [item.image_path for item in _listed(resolved)]


def _errors(resolved: ResolvedInputs) -> dict[str, str | None]:
    return {item.image_path: item.error for item in _listed(resolved)}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{b.png, a.jpg, C.JPEG, sub/deep/d.png, sub/c.webp, .hidden.jpg, .cache/e.jpg, x.jpg/, notes.txt}"""
    root = tmp_path / "images"
    for i, rel in enumerate(["b.png", "a.jpg", "C.JPEG", "sub/deep/d.png", "sub/c.webp"]):
        if rel.endswith(".webp"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (3, 3)).save(root / rel, format="WEBP")
        else:
            _image(root / rel, seed=i)
    _image(root / ".hidden.jpg")
    _image(root / ".cache" / "e.jpg")
    (root / "x.jpg").mkdir()
    (root / "notes.txt").write_text("not an image\n")
    return root


# --- folders -------------------------------------------------------------------------------------------


def test_directory_recursive_and_deterministic(tree: Path) -> None:
    """A folder is one container, walked in a Ray task: each folder's entries in name order, then its
    subfolders depth-first."""
    resolved = resolve_inputs(str(tree))
    assert resolved.items == [] and resolved.containers == [Container("folder", str(tree))]
    expected = [
        str(tree / rel) for rel in ["C.JPEG", "a.jpg", "b.png", "notes.txt", "x.jpg", "sub/c.webp", "sub/deep/d.png"]
    ]
    assert _paths(resolved) == expected
    assert _paths(resolve_inputs(str(tree))) == expected  # same order every time
    assert all(isinstance(item, InputItem) and item.data is None for item in _listed(resolved))
    ok = [p for p, err in _errors(resolved).items() if err is None]
    assert sorted(ok) == sorted(str(tree / rel) for rel in ["a.jpg", "b.png", "C.JPEG", "sub/deep/d.png", "sub/c.webp"])


def test_directory_skips_hidden_files_and_folders(tree: Path) -> None:
    paths = _paths(resolve_inputs(str(tree)))
    assert not any("/." in p for p in paths)
    assert str(tree / ".hidden.jpg") not in paths
    assert str(tree / ".cache" / "e.jpg") not in paths


def test_a_folder_tree_is_walked_in_the_task_not_on_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving a folder walks it only up to its first image; expanding the container walks it all."""
    for i in range(20):
        _image(tmp_path / f"d{i:02d}" / "a.png", seed=i)
    scanned: list[str] = []
    scan = local_files._scan
    monkeypatch.setattr(local_files, "_scan", lambda folder: scanned.append(folder) or scan(folder))
    resolved = resolve_inputs(str(tmp_path), exclude=str(tmp_path / "d05"))
    assert resolved.containers == [Container("folder", str(tmp_path), str(tmp_path / "d05"))]
    assert len(scanned) == 2  # the root and its first subfolder
    paths = _paths(resolved)
    assert paths == [str(tmp_path / f"d{i:02d}" / "a.png") for i in range(20) if i != 5]
    assert len(scanned) == 2 + 20  # the task's walk: every folder but the excluded one, each once


def test_hidden_git_folder_does_not_break_parquet_folder(tmp_path: Path) -> None:
    """A cloned dataset repo: only Parquet files apart from ``.git/`` -> still containers."""
    pq.write_table(pa.table({"image_path": ["a.jpg"]}), tmp_path / "train.parquet")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "ab12").write_bytes(b"blob")
    (tmp_path / ".gitattributes").write_text("*.parquet filter=lfs\n")
    resolved = resolve_inputs(str(tmp_path))
    assert resolved.items == []
    assert resolved.containers == [Container("parquet", str(tmp_path / "train.parquet"))]


def test_subfolder_named_like_an_image_is_an_error_item(tree: Path) -> None:
    error = _errors(resolve_inputs(str(tree)))[str(tree / "x.jpg")]
    assert error is not None and error.startswith("is a directory")


def test_non_image_file_in_image_folder_is_an_error_item(tree: Path) -> None:
    error = _errors(resolve_inputs(str(tree)))[str(tree / "notes.txt")]
    assert error is not None and "not an image file" in error and ".txt" in error


def test_relative_directory_spec(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    assert _paths(resolve_inputs("images")) == _paths(resolve_inputs(str(tree)))
    assert _paths(resolve_inputs("images/a.jpg")) == [str(tree / "a.jpg")]


def test_single_image_file(tree: Path) -> None:
    resolved = resolve_inputs(str(tree / "b.png"))
    assert resolved.items == [InputItem(str(tree / "b.png"))] and resolved.containers == []


def test_folder_of_parquet_files_becomes_containers(tmp_path: Path) -> None:
    for name in ["b.parquet", "a.parquet", "sub/c.parquet"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / name)
    resolved = resolve_inputs(str(tmp_path))
    assert resolved.items == []
    assert resolved.containers == [
        Container("parquet", str(tmp_path / name)) for name in ["a.parquet", "b.parquet", "sub/c.parquet"]
    ]


def test_folder_of_tar_shards_becomes_containers(tmp_path: Path) -> None:
    for name in ["shard-000001.tar", "shard-000000.tar"]:
        _shard(tmp_path / name, {"000001.jpg": _encode("JPEG")})
    resolved = resolve_inputs(str(tmp_path))
    assert resolved.items == []
    assert resolved.containers == [
        Container("tar", str(tmp_path / name)) for name in ["shard-000000.tar", "shard-000001.tar"]
    ]


def test_mixed_folder_is_a_folder_of_images(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "a.parquet")
    _image(tmp_path / "b.png")
    resolved = resolve_inputs(str(tmp_path))
    assert resolved.containers == [Container("folder", str(tmp_path))]
    assert _errors(resolved) == {
        str(tmp_path / "a.parquet"): "not an image file (extension '.parquet')",
        str(tmp_path / "b.png"): None,
    }


def test_missing_input_raises_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(InputError, match="nope"):
        resolve_inputs(missing)


def test_output_folder_inside_input_folder_is_excluded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun with ``--output dsin/labels``: the run's own files are not inputs (walks and globs)."""
    dsin = tmp_path / "dsin"
    _image(dsin / "a.jpg")
    _image(dsin / "labels2" / "b.jpg")  # shares a prefix with the output folder, not excluded
    for rel in ["labels/coco.json", "labels/manifest.json", "labels/predictions/part-0.parquet"]:
        (dsin / rel).parent.mkdir(parents=True, exist_ok=True)
        (dsin / rel).write_bytes(b"{}")
    _image(dsin / "labels" / "sub" / "s.png")
    expected = [str(dsin / "a.jpg"), str(dsin / "labels2" / "b.jpg")]
    assert len(_listed(resolve_inputs(str(dsin)))) == 6  # without exclude, all listed
    resolved = resolve_inputs(str(dsin), exclude=str(dsin / "labels"))
    assert _errors(resolved) == dict.fromkeys(expected)
    assert _paths(resolve_inputs(f"{dsin}/**/*", exclude=str(dsin / "labels"))) == expected
    monkeypatch.chdir(tmp_path)
    assert _paths(resolve_inputs("dsin", exclude="dsin/./labels/")) == expected
    # an input inside the excluded folder lists nothing of it (the job refuses such an input up front)
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs(f"{dsin / 'labels' / 'sub'}/*.png", exclude=str(dsin / "labels"))


def test_output_folder_inside_parquet_folder_is_excluded(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "train.parquet")
    (tmp_path / "labels" / "predictions").mkdir(parents=True)
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "labels" / "predictions" / "part-0.parquet")
    (tmp_path / "labels" / "coco.json").write_text("{}")
    resolved = resolve_inputs(str(tmp_path), exclude=str(tmp_path / "labels"))
    assert resolved.items == [] and resolved.containers == [Container("parquet", str(tmp_path / "train.parquet"))]


def test_broken_symbolic_link_is_an_error_item(tree: Path, tmp_path: Path) -> None:
    (tree / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tree / "sub" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (tree / ".hidden-gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    errors = _errors(resolve_inputs(str(tree)))
    assert errors[str(tree / "gone.jpg")] == BROKEN_LINK == "broken symbolic link (target missing)"
    assert errors[str(tree / "sub" / "gone.txt")] == BROKEN_LINK
    assert str(tree / ".hidden-gone.jpg") not in errors
    assert _errors(resolve_inputs(f"{tree}/*.jpg"))[str(tree / "gone.jpg")] == BROKEN_LINK
    listing = tmp_path / "list.txt"
    listing.write_text("images/gone.jpg\n")
    assert _errors(resolve_inputs(str(listing))) == {str(tree / "gone.jpg"): BROKEN_LINK}


IMAGES = ["C.JPEG", "a.jpg", "b.png", "sub/c.webp", "sub/deep/d.png"]


def _labelable(resolved: ResolvedInputs) -> list[str]:
    return [item.image_path for item in _listed(resolved) if item.error is None]


@pytest.mark.timeout(60)
def test_a_folder_link_loop_lists_each_image_once_and_is_reported(tree: Path) -> None:
    (tree / "sub" / "deep" / "up").symlink_to("..")
    (tree / "sub" / "up").symlink_to("..")  # two links to the same folder, each leading back
    (tree / "sub" / "again").symlink_to("..")
    resolved = resolve_inputs(str(tree))
    assert _labelable(resolved) == [str(tree / rel) for rel in IMAGES]
    errors = _errors(resolved)
    for link, target in [("sub/deep/up", tree / "sub"), ("sub/up", tree), ("sub/again", tree)]:
        assert errors[str(tree / link)] == f"symbolic link loop: leads back to {target} (not followed)"
    assert _labelable(resolve_inputs(f"{tree}/**/*.png")) == [str(tree / "b.png"), str(tree / "sub/deep/d.png")]


def test_a_link_to_a_folder_already_listed_lists_its_images_under_the_real_path(tree: Path, tmp_path: Path) -> None:
    (tree / "a_link").symlink_to(tree / "sub")  # sorts before "sub": the real path still wins
    outside = tmp_path / "outside"
    _image(outside / "o.png")
    (tree / "out1").symlink_to(outside)
    (tree / "out2").symlink_to(outside)
    resolved = resolve_inputs(str(tree))
    assert sorted(_labelable(resolved)) == sorted(str(tree / rel) for rel in [*IMAGES, "out1/o.png"])
    errors = _errors(resolved)
    assert errors[str(tree / "a_link")] == (
        f"link to a folder already listed as {tree / 'sub'} (not followed: each image is listed once)"
    )
    assert errors[str(tree / "out2")].startswith(f"link to a folder already listed as {tree / 'out1'} ")


def test_a_file_link_loop_is_reported_as_a_loop(tree: Path, tmp_path: Path) -> None:
    (tree / "loop1.jpg").symlink_to(tree / "loop2.jpg")
    (tree / "loop2.jpg").symlink_to(tree / "loop1.jpg")
    (tree / "self.png").symlink_to(tree / "self.png")
    errors = _errors(resolve_inputs(str(tree)))
    assert errors[str(tree / "loop1.jpg")] == errors[str(tree / "self.png")] == LINK_LOOP
    assert LINK_LOOP == "symbolic link loop (the link leads back to itself)"
    listing = tmp_path / "list.txt"
    listing.write_text("images/loop1.jpg\n")
    assert _errors(resolve_inputs(str(listing))) == {str(tree / "loop1.jpg"): LINK_LOOP}


@pytest.mark.timeout(60)  # opening a named pipe nobody writes to waits forever
def test_a_named_pipe_is_never_opened_and_is_an_error_item(tree: Path, tmp_path: Path) -> None:
    os.mkfifo(tree / "pipe.jpg")
    os.mkfifo(tree / "sub" / "pipe")
    errors = _errors(resolve_inputs(str(tree)))
    reason = "not a regular file (named pipe)"
    assert errors[str(tree / "pipe.jpg")] == errors[str(tree / "sub" / "pipe")] == reason
    assert _errors(resolve_inputs(str(tree / "pipe.jpg"))) == {str(tree / "pipe.jpg"): reason}
    assert _errors(resolve_inputs(f"{tree}/*.jpg"))[str(tree / "pipe.jpg")] == reason
    listing = tmp_path / "list.txt"
    listing.write_text("images/pipe.jpg\n")
    assert _errors(resolve_inputs(str(listing))) == {str(tree / "pipe.jpg"): reason}
    with pytest.raises(OSError, match=re.escape(reason)):
        read_bytes(str(tree / "pipe.jpg"))  # a path that became a pipe after it was listed


def test_broken_symbolic_link_in_a_parquet_folder(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").symlink_to(tmp_path / "missing.parquet")
    resolved = resolve_inputs(str(tmp_path))
    assert resolved.containers == [Container("parquet", str(tmp_path / "a.parquet"))]
    assert _errors(resolved) == {str(tmp_path / "b.parquet"): BROKEN_LINK}


def test_existing_spec_with_glob_characters_is_taken_literally(tmp_path: Path) -> None:
    _image(tmp_path / "set [1]" / "a.jpg")
    _image(tmp_path / "set 1" / "decoy.jpg")  # what ``set [1]`` matches as a glob
    _image(tmp_path / "photo[2]?.jpg")
    assert _paths(resolve_inputs(str(tmp_path / "set [1]"))) == [str(tmp_path / "set [1]" / "a.jpg")]
    assert _paths(resolve_inputs(str(tmp_path / "photo[2]?.jpg"))) == [str(tmp_path / "photo[2]?.jpg")]
    # a pattern that does not exist as written is still a glob; ``[[]`` escapes a bracket
    assert _paths(resolve_inputs(f"{tmp_path}/set [[]1]/*.jpg")) == [str(tmp_path / "set [1]" / "a.jpg")]
    assert _paths(resolve_inputs(f"{tmp_path}/set ?/*.jpg")) == [str(tmp_path / "set 1" / "decoy.jpg")]


def test_folder_without_images_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no images found in .*empty.*\.jpg.*\.png"):
        resolve_inputs(str(tmp_path / "empty"))
    _image(tmp_path / "hidden" / ".a.jpg")
    (tmp_path / "hidden" / "sub").mkdir()
    with pytest.raises(InputError, match="no images found"):
        resolve_inputs(str(tmp_path / "hidden"))
    with pytest.raises(InputError, match="no images found"):
        resolve_inputs(f"{tmp_path}/h*")  # matches only a folder


def test_folder_of_non_images_is_listed_as_errors(tmp_path: Path) -> None:
    """Not "no images": each file lands in the errors table with its reason."""
    (tmp_path / "notes.txt").write_text("x")
    expected = {str(tmp_path / "notes.txt"): "not an image file (extension '.txt')"}
    assert _errors(resolve_inputs(str(tmp_path))) == expected


# --- globs ---------------------------------------------------------------------------------------------


def test_recursive_glob(tree: Path) -> None:
    resolved = resolve_inputs(f"{tree}/**/*.png")
    assert _paths(resolved) == [str(tree / "b.png"), str(tree / "sub" / "deep" / "d.png")]
    assert all(item.error is None for item in resolved.items)


def test_flat_glob_stays_in_its_folder(tree: Path) -> None:
    _image(tree / "sub" / "nested.jpg")
    resolved = resolve_inputs(f"{tree}/*.jpg")
    assert _errors(resolved) == {
        str(tree / "a.jpg"): None,
        str(tree / "x.jpg"): "is a directory, not an image file",
    }


def test_glob_wildcard_in_folder_and_relative(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    assert _paths(resolve_inputs("images/s*/*.webp")) == [str(tree / "sub" / "c.webp")]
    assert _paths(resolve_inputs("images/?.png")) == [str(tree / "b.png")]


def test_glob_of_containers(tmp_path: Path) -> None:
    _shard(tmp_path / "s1.tar", {"k.jpg": _encode("JPEG")})
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "t.parquet")
    resolved = resolve_inputs(f"{tmp_path}/*")
    assert resolved.items == []
    assert resolved.containers == [
        Container("tar", str(tmp_path / "s1.tar")),
        Container("parquet", str(tmp_path / "t.parquet")),
    ]


def test_glob_matching_nothing_raises(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\*\.gif"):
        resolve_inputs(f"{tree}/**/*.gif")
    with pytest.raises(InputError):
        resolve_inputs(f"{tmp_path}/does-not-exist/*.jpg")


def _undecodable(folder: Path, name: bytes) -> str:
    """Create ``folder / name`` (a name that is not UTF-8); the name as the outputs show it (bytes escaped)."""
    try:
        with open(os.fsencode(folder) + b"/" + name, "wb") as file:
            file.write(_encode("JPEG"))
    except OSError:
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    return f"{folder}/{name.decode('utf-8', 'backslashreplace')}"


def test_a_name_that_is_not_utf8_is_an_error_row_and_everything_else_is_listed(tree: Path) -> None:
    """Such a name (kept by Python as surrogate escapes, which no output can store) stopped the whole run."""
    bad_file = _undecodable(tree / "sub", b"bad\xff.jpg")
    os.mkdir(os.fsencode(tree) + b"/folder\xfe")
    os.mkdir(os.fsencode(tree) + b"/folder\xfe/inner")
    with open(os.fsencode(tree) + b"/folder\xfe/inner/a.jpg", "wb") as file:
        file.write(_encode("JPEG"))
    for spec in (str(tree), f"{tree}/**/*"):
        errors = _errors(resolve_inputs(spec))
        assert errors[bad_file] == NOT_UTF8 and errors[f"{tree}/folder\\xfe"] == NOT_UTF8
        assert errors[str(tree / "a.jpg")] is None and errors[str(tree / "sub" / "deep" / "d.png")] is None
        assert all(path.encode("utf-8") for path in errors), "every path can be written"
    with pytest.raises(InputError, match=re.escape("input 'folder\\\\xfe' is not valid UTF-8")):
        resolve_inputs(os.fsdecode(b"folder\xfe"))


def test_a_shard_member_whose_name_is_not_utf8_is_an_error_row(tmp_path: Path) -> None:
    jpg = _encode("JPEG", seed=5)
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in (os.fsdecode(b"bad\xff.jpg"), "good.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(jpg)
            tar.addfile(info, io.BytesIO(jpg))
    assert list(expand_container(Container("tar", str(shard)))) == [
        InputItem(f"{shard}/bad\\xff.jpg", error=NOT_UTF8),
        InputItem(f"{shard}/good.jpg", data=jpg),
    ]


def test_a_url_pyarrow_cannot_read_is_refused_as_input_and_an_error_row_in_a_list(tree: Path, tmp_path: Path) -> None:
    """``http(s)://`` gave pyarrow's ``ArrowInvalid: Expected a local filesystem path`` traceback."""
    refusal = "pyarrow has no filesystem for http:// URIs"
    with pytest.raises(InputError, match=re.escape(f"cannot read 'http://127.0.0.1:9/x.jpg': {refusal}")):
        resolve_inputs("http://127.0.0.1:9/x.jpg")
    url = "https://example.com/x.jpg"
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{url}\n{tree / 'a.jpg'}\n")
    table = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"image_path": [url, str(tree / "a.jpg")]}), table)
    for container in (Container("list", str(listing)), Container("parquet", str(table))):
        errors = {item.image_path: item.error for item in expand_container(container)}
        assert errors[str(tree / "a.jpg")] is None
        assert errors[url].startswith(f"cannot read {url!r}: pyarrow has no filesystem for https:// URIs")


# --- list files ----------------------------------------------------------------------------------------


def test_list_file(tree: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(tree / "sub" / "deep" / "d.png")
    (lists / "inputs.txt").write_text(
        f"# images to label\n\n../images/b.png\n  {absolute}  \n   \n../images/missing.jpg\n# ../images/a.jpg\n"
        "../images/notes.txt\n"
    )
    resolved = resolve_inputs(str(lists / "inputs.txt"))
    assert resolved.items == [] and resolved.containers == [Container("list", str(lists / "inputs.txt"))]
    assert [(i.image_path, i.data, i.error) for i in _listed(resolved)] == [
        (str(tree / "b.png"), None, None),
        (absolute, None, None),
        (str(tree / "missing.jpg"), None, "file not found"),
        (str(tree / "notes.txt"), None, "not an image file (extension '.txt')"),
    ]


def test_list_file_keeps_its_order(tree: Path) -> None:
    listing = tree.parent / "order.lst"
    listing.write_text("images/b.png\nimages/a.jpg\n")
    assert _paths(resolve_inputs(str(listing))) == [str(tree / "b.png"), str(tree / "a.jpg")]


def test_list_file_names_each_path_once(tree: Path, tmp_path: Path) -> None:
    """Duplicates after normalising the path are dropped (first spelling kept); URIs only when identical."""
    listing = tree.parent / "dups.txt"
    listing.write_text(
        f"images/a.jpg\nimages/b.png\nimages/a.jpg\n./images/a.jpg\n{tree}/sub/../a.jpg\nimages/gone.jpg\n"
        f"{tree}//b.png\nimages/gone.jpg\nmock:///bucket/x.jpg\nmock:///bucket/x.jpg\nmock:///bucket/./x.jpg\n"
    )
    assert [(i.image_path, i.error) for i in _listed(resolve_inputs(str(listing)))] == [
        (str(tree / "a.jpg"), None),
        (str(tree / "b.png"), None),
        (str(tree / "gone.jpg"), "file not found"),
        ("mock:///bucket/x.jpg", "file not found"),
        ("mock:///bucket/./x.jpg", "file not found"),
    ]


def test_list_file_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(b"# paths\na.jpg\nb\xffc.jpg\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(listing))}:3: not valid UTF-8 \(byte 0xff at offset 15"):
        _listed(resolve_inputs(str(listing)))


def test_empty_list_file_raises(tmp_path: Path) -> None:
    listing = tmp_path / "inputs.txt"
    for text in ["", "# only a comment\n\n   \n"]:
        listing.write_text(text)
        with pytest.raises(InputError, match=rf"no images found in .*{re.escape(listing.name)}.*names no path"):
            _listed(resolve_inputs(str(listing)))


# --- Parquet -------------------------------------------------------------------------------------------


def test_parquet_path_column_only(tree: Path, tmp_path: Path) -> None:
    file = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"image_path": [str(tree / "a.jpg"), str(tree / "gone.png")], "w": [1, 2]}), file)
    resolved = resolve_inputs(str(file))
    assert resolved.items == [] and resolved.containers == [Container("parquet", str(file))]
    assert list(expand_container(resolved.containers[0])) == [
        InputItem(str(tree / "a.jpg")),
        InputItem(str(tree / "gone.png"), error="file not found"),
    ]


def test_parquet_bytes_column_only(tmp_path: Path) -> None:
    file = tmp_path / "bytes.parquet"
    blobs = [_encode("PNG", seed=i) for i in range(3)]
    pq.write_table(pa.table({"image_bytes": pa.array(blobs + [None], pa.binary())}), file, row_group_size=2)
    items = list(expand_container(Container("parquet", str(file))))
    assert [i.image_path for i in items] == [f"{file}#{row}" for row in range(4)]
    assert [i.data for i in items[:3]] == blobs and all(i.error is None for i in items[:3])
    assert items[3].data is None and items[3].error is not None and "image_bytes" in items[3].error


def test_parquet_path_and_bytes_columns(tmp_path: Path) -> None:
    file = tmp_path / "both.parquet"
    blobs = [_encode("JPEG", seed=1), _encode("PNG", seed=2)]
    pq.write_table(pa.table({"path": ["cats/1.jpg", None], "jpg": blobs}), file)
    items = list(expand_container(Container("parquet", str(file))))
    # the named path wins; the bytes come from the row, so the path need not exist
    assert items == [InputItem("cats/1.jpg", data=blobs[0]), InputItem(f"{file}#1", data=blobs[1])]


def test_parquet_hugging_face_image_struct(tmp_path: Path) -> None:
    file = tmp_path / "hf.parquet"
    blobs = [_encode("PNG", seed=3), _encode("JPEG", seed=4)]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = pa.array([{"bytes": blobs[0], "path": "img_0.png"}, {"bytes": blobs[1], "path": None}], struct)
    pq.write_table(pa.table({"image": column, "label": [0, 1]}), file)
    items = list(expand_container(Container("parquet", str(file))))
    assert items == [InputItem("img_0.png", data=blobs[0]), InputItem(f"{file}#1", data=blobs[1])]


def test_parquet_explicit_bytes_column(tmp_path: Path) -> None:
    file = tmp_path / "custom.parquet"
    blob = _encode()
    pq.write_table(pa.table({"pixels_png": [blob], "image_bytes": [b"decoy"]}), file)
    assert list(expand_container(Container("parquet", str(file)), bytes_column="pixels_png")) == [
        InputItem(f"{file}#0", data=blob)
    ]


def test_parquet_missing_bytes_column_raises(tmp_path: Path) -> None:
    file = tmp_path / "p.parquet"
    pq.write_table(pa.table({"image_path": ["a.jpg"], "score": [0.5]}), file)
    with pytest.raises(InputError, match=r"no column 'pixels'.*image_path.*score"):
        list(expand_container(Container("parquet", str(file)), bytes_column="pixels"))


def test_parquet_without_usable_columns_raises(tmp_path: Path) -> None:
    file = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["a cat"], "score": [0.5]}), file)
    with pytest.raises(InputError, match=r"path column.*image-bytes column.*caption"):
        list(expand_container(Container("parquet", str(file))))


def test_parquet_relative_paths_from_its_folder(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like list files: relative paths are taken from the Parquet file's folder, not the current one."""
    file = tree / "meta" / "paths.parquet"
    file.parent.mkdir()
    pq.write_table(pa.table({"image_path": ["../a.jpg", "../gone.png", str(tree / "b.png")]}), file)
    monkeypatch.chdir(tmp_path)
    items = list(expand_container(Container("parquet", str(file))))
    assert items[0] == InputItem(str(tree / "a.jpg")) and items[2] == InputItem(str(tree / "b.png"))
    assert items[1].image_path == str(tree / "gone.png")
    assert items[1].error is not None and items[1].error.startswith(f"file not found: {tree / 'gone.png'}")


def test_parquet_without_usable_columns_fails_when_listing(tmp_path: Path) -> None:
    """Up front, before Ray starts, with the message expanding it gives (first Parquet file only)."""
    pq.write_table(pa.table({"caption": ["a cat"], "score": [0.5]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"a\.parquet: needs a path column.*image-bytes column.*caption"):
        resolve_inputs(str(tmp_path))
    with pytest.raises(InputError, match=r"a\.parquet: needs a path column"):
        resolve_inputs(str(tmp_path / "a.parquet"))


def test_parquet_schema_check_honours_bytes_column(tmp_path: Path) -> None:
    file = tmp_path / "custom.parquet"
    pq.write_table(pa.table({"pixels_png": [_encode()], "score": [0.5]}), file)
    assert resolve_inputs(str(file)).containers == [Container("parquet", str(file))]  # --bytes-column unknown
    assert resolve_inputs(str(file), bytes_column="pixels_png").containers == [Container("parquet", str(file))]
    with pytest.raises(InputError, match=r"no column 'pixels'.*pixels_png.*score"):
        resolve_inputs(str(file), bytes_column="pixels")


def test_unreadable_parquet_fails_when_listing(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        resolve_inputs(str(tmp_path / "broken.parquet"))


# --- WebDataset ----------------------------------------------------------------------------------------


def _shard(path: Path, members: dict[str, bytes | None]) -> Path:
    """A tar with ``members`` in order (``None`` -> a folder entry)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_shard(tmp_path: Path) -> None:
    jpg, png = _encode("JPEG", seed=5), _encode("PNG", seed=6)
    shard = _shard(
        tmp_path / "shard-000000.tar",
        {"000001.jpg": jpg, "000001.json": b'{"label": 1}', "000002.png": png, "000002.txt": b"a dog"},
    )
    resolved = resolve_inputs(str(shard))
    assert resolved.items == [] and resolved.containers == [Container("tar", str(shard))]
    assert list(expand_container(resolved.containers[0])) == [
        InputItem(f"{shard}/000001.jpg", data=jpg),
        InputItem(f"{shard}/000002.png", data=png),
    ]


def test_webdataset_one_item_per_sample_key(tmp_path: Path) -> None:
    """The key is the basename up to its first dot: ``k.seg.png`` belongs to sample ``k``."""
    jpg, seg, other = _encode("JPEG", seed=7), _encode("PNG", seed=8), _encode("PNG", seed=9)
    shard = _shard(
        tmp_path / "s.tar",
        {"train": None, "train/k.jpg": jpg, "train/k.seg.png": seg, "train/k.v2.jpg": seg, "val/k.png": other},
    )
    assert list(expand_container(Container("tar", str(shard)))) == [
        InputItem(f"{shard}/train/k.jpg", data=jpg),
        InputItem(f"{shard}/val/k.png", data=other),
    ]


# --- ids and reading -----------------------------------------------------------------------------------


def test_image_id_stable_positive_and_json_safe() -> None:
    paths = [f"/data/{i}.jpg" for i in range(500)] + ["", "s3://bucket/é.png", "x.tar/000001.jpg"]
    ids = [image_id(p) for p in paths]
    assert ids == [image_id(p) for p in paths]
    assert all(isinstance(i, int) and 0 < i < 2**53 for i in ids)
    assert len(set(ids)) == len(ids)
    assert image_id("/data/0.jpg") == 8648439394540017  # pinned: ids must not change between releases


def test_read_bytes_local(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = (tree / "b.png").read_bytes()
    assert read_bytes(str(tree / "b.png")) == expected
    monkeypatch.chdir(tree)
    assert read_bytes("b.png") == expected
    with pytest.raises(OSError):
        read_bytes(str(tree / "missing.png"))


def _run_folder(folder: Path) -> None:
    """A labeling run's output after a review: its manifest, labels and review masks."""
    (folder / "predictions").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"status": "complete", "identity": {"model": "x"}}))
    (folder / "coco.json").write_text("{}")
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), folder / "predictions" / "part-0.parquet")
    _image(folder / "review-masks" / "run-0123" / "predictions" / "ab" / "1.png")


def test_a_labeling_run_folder_inside_the_input_is_never_listed(tmp_path: Path) -> None:
    """Earlier runs' folders (not the --output of this one) left in the input folder: labels, not images."""
    data = tmp_path / "data"
    expected = [str(_image(data / "a.jpg")), str(_image(data / "sub" / "b.png"))]
    _run_folder(data / "labels-v1")
    _run_folder(data / "sub" / "labels-v2")
    (data / "not-a-run").mkdir()
    (data / "not-a-run" / "manifest.json").write_text('{"another": "tool"}')  # listed: no run's manifest
    expected.insert(1, str(_image(data / "not-a-run" / "c.png")))
    errors = _errors(resolve_inputs(str(data), exclude=str(tmp_path / "out")))
    assert errors.pop(str(data / "not-a-run" / "manifest.json")) == "not an image file (extension '.json')"
    assert errors == dict.fromkeys(expected)
    assert _paths(resolve_inputs(f"{data}/**/*.png")) == expected[1:]
    # only Parquet files apart from the run: Parquet containers, the run's shard not among them
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"image_path": ["x.jpg"]}), shards / "train.parquet")
    _run_folder(shards / "labels")
    resolved = resolve_inputs(str(shards), exclude=str(tmp_path / "out"))
    assert resolved.items == [] and resolved.containers == [Container("parquet", str(shards / "train.parquet"))]
