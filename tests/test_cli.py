"""The jobs' shared ending and generated parsers: a UserError is one line naming the job's flags, any
other exception (a bug) keeps its traceback; each generated option keeps its dataclass field's default."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest

from pipeline.cli import run_job, user_message
from pipeline.dataclass_args import dataclass_from_args
from pipeline.label.images import DEFAULT_MAX_PIXELS
from pipeline.label.job import LabelOptions
from pipeline.train_options import RunOptions
from san.errors import OptionError, UserError
from san.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**given)


def test_user_error_is_one_line_with_the_jobs_flags(capsys: pytest.CaptureFixture[str]) -> None:
    def main(arguments: argparse.Namespace) -> None:
        raise OptionError("`batch_size` 3 is not divisible by the 2 workers; see `threads` and `unknown_name`")

    with pytest.raises(SystemExit) as info:
        run_job(main, lambda: parse(batch_size=3, threads=None))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --batch-size 3 is not divisible by the 2 workers; see --threads and unknown_name\n"


@pytest.mark.parametrize("bug", [ValueError("bad shape"), KeyError("x"), OSError("disk"), TypeError("t")])
def test_a_bug_keeps_its_traceback(bug: Exception) -> None:
    """Not a UserError: run_job lets it through, so Python prints the traceback (exit status 1)."""

    def main(arguments: argparse.Namespace) -> None:
        raise bug

    with pytest.raises(type(bug)):
        run_job(main, lambda: parse())


def test_a_bug_in_a_job_script_is_not_turned_into_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pipeline.evaluate

    def broken(*args: object, **kwargs: object) -> dict:
        raise KeyError("num_images")

    monkeypatch.setattr(pipeline.evaluate, "evaluate_run", broken)
    monkeypatch.setattr(sys, "argv", ["jobs/evaluate.py", "--predictions", str(tmp_path), "--gt", str(tmp_path)])
    with pytest.raises(KeyError, match="num_images"):
        runpy.run_path(str(ROOT / "jobs" / "evaluate.py"), run_name="__main__")


def test_a_user_error_from_a_ray_task_shows_its_own_message(capsys: pytest.CaptureFixture[str]) -> None:
    from ray.exceptions import RayTaskError

    cause = OptionError("`dtype` bf16 needs a GPU")
    wrapped = RayTaskError("map_batches", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, UserError)

    def main(arguments: argparse.Namespace) -> None:
        raise wrapped

    with pytest.raises(SystemExit):
        run_job(main, lambda: parse(dtype="bf16"))
    assert capsys.readouterr().err == "error: --dtype bf16 needs a GPU\n"


def test_user_error_survives_pickling_with_its_option_names() -> None:
    """Ray sends a worker's exception pickled: the option names must still become flags."""
    import pickle

    error = pickle.loads(pickle.dumps(OptionError("`max_size` must be at least 1")))
    assert str(error) == "max_size must be at least 1"
    assert user_message(error, parse(max_size=0)) == "--max-size must be at least 1"


def test_library_error_messages_name_no_flag() -> None:
    """san/ names options by field (`dtype`), never by flag (--dtype): the jobs add the flag wording."""
    offenders = []
    for path in sorted((ROOT / "san").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for constant in ast.walk(node.exc):
                    if isinstance(constant, ast.Constant) and re.search(r"--[a-z]", str(constant.value)):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {constant.value}")
    assert not offenders, "\n".join(offenders)


def option_fields(*classes: type) -> list[dataclasses.Field]:
    return [f for cls in classes for f in dataclasses.fields(cls) if "help" in f.metadata]


@pytest.mark.parametrize(("job", "classes"), [("label", (LabelOptions,)), ("train", (TrainConfig, RunOptions))])
def test_generated_parser_keeps_every_default_and_lists_every_field(
    job: str, classes: tuple[type, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = load_job(job).build_parser()
    actions = {action.dest: action for action in parser._actions}
    for field in option_fields(*classes):
        action = actions[field.name]
        if field.default is dataclasses.MISSING:
            assert action.default is None, field.name
        else:
            assert action.default == field.default, field.name
            assert type(action.default) is type(field.default), field.name
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for field in option_fields(*classes):
        name = field.name.replace("_", "-")
        shown = f"--no-{name}" if field.default is True else f"--{name}"
        assert re.search(rf"^  {shown}\b", text, re.M), f"{shown} missing from --help"


def test_label_flags_build_the_options_they_name() -> None:
    job = load_job("label")
    arguments = job.parse_args(
        ["--vocab", "v.txt", "--output", "out", "--input", "in", "--workers", "2-4", "--no-progress", "--smoke-test"]
        + ["--max-pixels", "1000000"]
    )
    options = dataclass_from_args(LabelOptions, arguments)
    assert (options.workers, options.progress, options.smoke_test, options.batch_size) == ((2, 4), False, True, 4)
    assert options.max_pixels == 1_000_000


@pytest.mark.parametrize(("value", "message"), [(0, "at least 1"), (DEFAULT_MAX_PIXELS + 1, "at most")])
def test_label_max_pixels_outside_what_pil_decodes_is_refused(value: int, message: str) -> None:
    with pytest.raises(OptionError, match=f"^max_pixels must be {message}"):
        LabelOptions(vocab="v.txt", output="out", input="in", max_pixels=value)


def test_train_smoke_test_has_its_own_defaults_unless_given() -> None:
    job = load_job("train")
    smoke = job.parse_args(["--output", "o", "--smoke-test", "--workers", "2"])
    assert (smoke.steps, smoke.batch_size, smoke.crop_size) == (4, 4, 96)
    given = job.parse_args(["--output", "o", "--smoke-test", "--steps", "7", "--no-color-aug"])
    assert (given.steps, given.batch_size, given.color_aug) == (7, 2, False)
    plain = job.parse_args(["--output", "o", "--data", "d"])
    assert (plain.steps, plain.batch_size, plain.crop_size) == (60_000, 32, 640)


def test_train_workers_are_checked_once_in_their_dataclass() -> None:
    with pytest.raises(OptionError, match="^workers must be >= 1, got 0"):
        RunOptions(workers=0)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_nan_and_infinite_numbers_are_refused_in_one_line_for_every_job(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--min-score nan`` ran the job until the manifest's JSON refused NaN, with a traceback."""
    label = ["--vocab", "v.txt", "--output", "out", "--smoke-test", f"--min-score={value}"]
    with pytest.raises(SystemExit) as info:
        run_job(
            lambda arguments: dataclass_from_args(LabelOptions, arguments), lambda: load_job("label").parse_args(label)
        )
    assert info.value.code == 2
    shown = "nan" if value == "nan" else "-inf" if value == "-inf" else "inf"
    assert capsys.readouterr().err == f"error: --min-score must be a finite number, got {shown}\n"
    train = load_job("train").parse_args(["--output", "o", "--data", "d", f"--lr={value}"])
    with pytest.raises(OptionError, match=f"^lr must be a finite number, got {shown}$"):
        dataclass_from_args(TrainConfig, train)
    train.cpus_per_worker = float(value)
    with pytest.raises(OptionError, match=f"^cpus_per_worker must be a finite number, got {shown}$"):
        dataclass_from_args(RunOptions, train)
