"""Class names longer than CLIP's text context: a name whose longest prompt would be cut is refused (two
names that differ only after the cut would get one embedding), naming the vocabulary file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

import san
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.vocabulary import VocabularyError, load_vocabulary
from san.modeling.prompts import CONTEXT_LENGTH, VILD_TEMPLATES, prompt_length_problem

TOKENIZER = SimpleTokenizer()


def tokens(prompt: str) -> int:
    """What CLIP reads of ``prompt``: start token, its tokens, end token (uncut)."""
    return len(TOKENIZER.encode(prompt)) + 2


def longest_prompt(name: str) -> tuple[int, str]:
    return max((tokens(template.format(name)), template.format(name)) for template in VILD_TEMPLATES)


def name_of(words: int, last: str = "cat") -> str:
    return " ".join(["striped"] * (words - 1) + [last])


def longest_fitting_name(last: str = "cat") -> str:
    words = 1
    while longest_prompt(name_of(words + 1, last))[0] <= CONTEXT_LENGTH:
        words += 1
    return name_of(words, last)


def test_the_length_check_counts_open_clips_own_tokens() -> None:
    """The check loads open_clip's tokenizer file without torch (san.modeling.prompts): the same tokens."""
    from san.modeling.prompts import _tokenizer

    texts = ["cat", "a photo of a traffic light.", "Café &amp; crème brûlée", "ＦＵＬＬ width", "don't-stop 42x!"]
    texts.append("猫 🐈")
    assert [_tokenizer().encode(text) for text in texts] == [TOKENIZER.encode(text) for text in texts]


def test_a_name_is_refused_from_the_first_token_that_would_be_cut() -> None:
    fitting = longest_fitting_name()
    assert longest_prompt(fitting)[0] > CONTEXT_LENGTH - 3, "the name tests the limit"
    assert prompt_length_problem(fitting, VILD_TEMPLATES) is None
    too_long = "striped " + fitting
    count, prompt = longest_prompt(too_long)
    assert count > CONTEXT_LENGTH
    assert prompt_length_problem(too_long, VILD_TEMPLATES) == (
        f"{too_long!r} is too long: its prompt {prompt!r} has {count} tokens and CLIP reads {CONTEXT_LENGTH} "
        "(the rest would be cut); shorten it"
    )


def test_the_labeling_job_refuses_a_long_name_naming_the_file_and_line(tmp_path: Path) -> None:
    long_cat, long_dog = name_of(70, "cat"), name_of(70, "dog")  # the same after the cut
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(f"# animals\nsky\nlong: {long_cat}, {long_dog}\n")
    options = LabelOptions(vocab=str(vocab), input=str(tmp_path), output=str(tmp_path / "out"), smoke_test=True)
    with pytest.raises(VocabularyError) as refused:
        run_label_job(options)
    assert str(refused.value).startswith(f"{vocab}:3: {long_cat!r} is too long: its prompt ")
    assert not (tmp_path / "out").exists(), "refused before anything is written"
    assert load_vocabulary(vocab).names == ("sky", "long"), "the file itself parses: only the job checks"


def test_the_text_classifier_refuses_to_cut_a_prompt() -> None:
    torch.manual_seed(0)
    classifier = san.build_san("san_tiny").text_classifier
    fitting = longest_fitting_name()
    assert classifier.class_embeddings([fitting]).shape[0] == 1
    with pytest.raises(ValueError, match=f"has more than the {CONTEXT_LENGTH} tokens CLIP reads"):
        classifier.class_embeddings(["striped " + fitting])
