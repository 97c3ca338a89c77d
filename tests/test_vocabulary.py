"""Tests for pipeline.vocabulary: parsing, errors with line numbers, prompts, score reduction, JSON."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.vocabulary import Vocabulary, VocabularyError, load_vocabulary, parse_vocabulary

GOOD = """\
# COCO-ish classes
cat
  person :  human,  people   # trailing comment
traffic    light

dog:
"""


def write(tmp_path: Path, content: str | bytes, name: str = "vocab.txt") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_parse_good_file(tmp_path: Path) -> None:
    vocab = load_vocabulary(write(tmp_path, GOOD))
    assert vocab.names == ("cat", "person", "traffic light", "dog")
    assert vocab.synonyms == ((), ("human", "people"), (), ())
    assert vocab.category_ids == (1, 2, 3, 4)
    assert vocab.prompts == ("cat", "person", "human", "people", "traffic light", "dog")
    assert vocab.prompt_to_class == (0, 1, 1, 1, 2, 3)
    assert len(vocab) == 4


def test_crlf_bom_and_unicode(tmp_path: Path) -> None:
    vocab = load_vocabulary(write(tmp_path, "\ufeffcaf\u00e9\r\n\u72ac: chien\r\n"))
    assert vocab.names == ("caf\u00e9", "\u72ac")
    assert vocab.synonyms == ((), ("chien",))


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("cat\n: foo\n", 2, "empty class name"),
        ("cat\n\n  :\n", 3, "empty class name"),
        ("cat\ndog: , wolf\n", 2, "empty synonym"),
        ("cat\ndog: wolf,\n", 2, "empty synonym"),
        ("cat\ndog: wolf,,hound\n", 2, "empty synonym"),
        ("cat\ndog: a: b\n", 2, "more than one ':'"),
        ("cat\ndog @\n", 2, "'' after '@' is not a minimum score"),
        ("cat\ndog: hound @ high  # comment\n", 2, "'high' after '@' is not a minimum score"),
        ("cat @ 0.2 @ 0.3\n", 1, "more than one '@'"),
        ("cat\n\ndog @ -0.1\n", 3, "minimum score '-0.1' is below 0"),
        ("cat @ nan\n", 1, "minimum score 'nan' is not a finite number"),
        ("cat\n@ 0.3\n", 2, "empty class name"),
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(VocabularyError) as info:
        load_vocabulary(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("text", "line", "first_line"),
    [
        ("cat\ndog\nCat\n", 3, 1),  # duplicate name, case-insensitive
        ("cat: kitty\n# c\ndog: KITTY\n", 3, 1),  # synonym repeated across classes
        ("cat\n\ndog: hound, CAT\n", 3, 1),  # synonym equal to another class name
        ("cat: kitty\nkitty\n", 2, 1),  # name equal to an earlier synonym
        ("dog: hound, hound\n", 1, 1),  # repeated within one line
        ("dog: Dog\n", 1, 1),  # synonym equal to its own name
        ("traffic light\ntraffic   LIGHT\n", 2, 1),  # after whitespace collapsing
        ("caf\u00e9\ndog\ncafe\u0301\n", 3, 1),  # one name in Unicode NFC and NFD: CLIP's tokenizer reads both alike
        ("dog: cafe\u0301\nCAF\u00c9\n", 2, 1),  # and ignoring case
    ],
)
def test_duplicates_give_both_lines(tmp_path: Path, text: str, line: int, first_line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(VocabularyError, match="duplicate") as info:
        load_vocabulary(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert f"line {first_line}" in message


def test_one_name_in_two_unicode_forms_is_a_duplicate_that_says_so(tmp_path: Path) -> None:
    """``café`` typed as one code point (NFC) and as ``e`` and a combining accent (NFD) were two classes."""
    path = write(tmp_path, "caf\u00e9: coffee shop\ncafe\u0301\n")
    with pytest.raises(VocabularyError) as info:
        load_vocabulary(path)
    assert str(info.value) == (
        f"{path}:2: duplicate class name or synonym 'cafe\u0301' (already defined as 'caf\u00e9' (the same letters in "
        "another Unicode form, NFC or NFD) on line 1)"
    )
    with pytest.raises(VocabularyError, match="Unicode form"):
        Vocabulary(names=("caf\u00e9", "cafe\u0301"), synonyms=((), ()))


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only\n  # comments\n"])
def test_no_classes(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(VocabularyError, match="no classes") as info:
        load_vocabulary(path)
    assert str(path) in str(info.value)


def test_undecodable_bytes_report_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"cat\ndog\n# comment\nbad \xff\xfe name\nbird\n")
    with pytest.raises(VocabularyError, match="not valid UTF-8") as info:
        load_vocabulary(path)
    assert str(info.value).startswith(f"{path}:4: ")


def test_undecodable_first_byte(tmp_path: Path) -> None:
    path = write(tmp_path, b"\x80cat\n")
    with pytest.raises(VocabularyError, match=re.escape(f"{path}:1: ")):
        load_vocabulary(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(VocabularyError, match=re.escape(str(missing))):
        load_vocabulary(missing)
    with pytest.raises(VocabularyError, match=re.escape(str(tmp_path))):
        load_vocabulary(tmp_path)


def test_parse_vocabulary_source_in_errors() -> None:
    with pytest.raises(VocabularyError, match=r"^my-vocab:2: empty class name"):
        parse_vocabulary("a\n:b\n", "my-vocab")


def test_json_round_trip_and_fingerprint(tmp_path: Path) -> None:
    vocab = load_vocabulary(write(tmp_path, GOOD))
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab
    assert again.fingerprint == vocab.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", vocab.fingerprint)
    # Comments and whitespace do not change the fingerprint; content does.
    reformatted = parse_vocabulary("cat\nperson: human,people\ntraffic light # x\ndog\n", "v2")
    assert reformatted.fingerprint == vocab.fingerprint
    assert parse_vocabulary("cat\n", "v").fingerprint != parse_vocabulary("Cat\n", "v").fingerprint


def test_from_json_validates() -> None:
    with pytest.raises(VocabularyError, match="duplicate"):
        Vocabulary.from_json({"names": ["a", "A"], "synonyms": [[], []]})
    with pytest.raises(VocabularyError, match="names"):
        Vocabulary.from_json({"classes": ["a"]})
    with pytest.raises(VocabularyError, match="no classes"):
        Vocabulary.from_json({"names": [], "synonyms": []})
    with pytest.raises(VocabularyError, match="normalised"):
        Vocabulary.from_json({"names": [" a "], "synonyms": [[]]})


def test_a_class_can_end_in_its_own_minimum_score() -> None:
    vocab = parse_vocabulary("cat @0.4\nperson: human, people @ 1e-1   # comment\ndog\n")
    assert vocab.names == ("cat", "person", "dog") and vocab.synonyms == ((), ("human", "people"), ())
    assert vocab.min_scores == (0.4, 0.1, None) and vocab.has_min_scores
    assert vocab.to_json()["min_scores"] == [0.4, 0.1, None] and Vocabulary.from_json(vocab.to_json()) == vocab
    plain = parse_vocabulary("cat\nperson: human, people\ndog\n")
    assert plain.min_scores == (None, None, None) and "min_scores" not in plain.to_json()
    assert plain.fingerprint == vocab.fingerprint, "the classes' identity; minimum scores are recorded apart"
    with pytest.raises(VocabularyError, match="class 2: minimum score -1 is below 0"):
        Vocabulary.from_json({"names": ["a", "b"], "min_scores": [None, -1]})
