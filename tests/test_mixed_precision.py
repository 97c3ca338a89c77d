"""Reduced-precision inference: under bf16/fp16 autocast the class scores stay close to float32 and
pick the same classes. The CPU cases run everywhere; the CUDA cases run where a GPU is present (the
labeling job's ``--dtype bf16|fp16`` path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import san
from pipeline.cli import job_parser, user_message
from pipeline.dataclass_args import add_dataclass_arguments
from san.errors import OptionError
from san.predictor import Predictor

VOCABULARY = ["person", "rocket", "sky", "flag", "grass"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 keeps 8 significant bits (0.4 % per rounding); a whole forward stays well within 5 %.
SCORE_TOLERANCE = 0.05
MIN_ARGMAX_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def tiny() -> san.SAN:
    torch.manual_seed(0)
    return san.build_san("san_tiny").eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def assert_close_to_float32(reference: torch.Tensor, reduced: torch.Tensor) -> None:
    assert reduced.dtype == torch.float32, "scores come back in float32 whatever the compute dtype"
    assert reduced.shape == reference.shape
    scale = max(1.0, reference.abs().max().item())
    assert (reduced - reference).abs().max().item() <= SCORE_TOLERANCE * scale
    agreement = (reduced.argmax(0) == reference.argmax(0)).float().mean().item()
    assert agreement >= MIN_ARGMAX_AGREEMENT


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)], ids=lambda device: f"device={device}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_predict_scores_under_autocast_match_float32(
    tiny: san.SAN, photo: np.ndarray, device: str, dtype: torch.dtype
) -> None:
    model = tiny.to(device)
    image = torch.from_numpy(photo).permute(2, 0, 1).to(device)
    with torch.inference_mode():
        reference = model.predict_scores([image], VOCABULARY)[0]
        with torch.autocast(device, dtype=dtype):
            reduced = model.predict_scores([image], VOCABULARY)[0]
    assert_close_to_float32(reference, reduced)


@CUDA
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_gpu_predictor_labels_like_float32(tiny: san.SAN, photo: np.ndarray, dtype: str) -> None:
    reference = Predictor(tiny, VOCABULARY, device="cuda").class_scores([photo])[0]
    reduced = Predictor(tiny, VOCABULARY, device="cuda", dtype=dtype).class_scores([photo])[0]
    assert_close_to_float32(reference, reduced)


def test_reduced_precision_on_cpu_is_refused_with_advice(tiny: san.SAN) -> None:
    from pipeline.label.job import LabelOptions  # imports Ray: not at module level, for GPU machines without it

    with pytest.raises(OptionError, match="^dtype bf16 needs a GPU.*use fp32") as error:
        Predictor(tiny, VOCABULARY, device="cpu", dtype="bf16")
    parser = job_parser("label.py", "Label.")
    add_dataclass_arguments(parser, LabelOptions)
    arguments = parser.parse_args(["--vocab", "v.txt", "--output", "out", "--dtype", "bf16"])
    assert user_message(error.value, arguments).startswith("--dtype bf16 needs a GPU"), "the label job names its flag"
