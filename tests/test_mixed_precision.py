"""Reduced-precision inference: under bf16/fp16 autocast, or with a bf16 image trunk on CPU, the class
scores stay close to float32 and pick the same classes. The CPU autocast cases run everywhere; the CUDA
cases run where a GPU is present (the labeling job's ``--dtype bf16|fp16`` path), and the bf16 CPU
agreement on photos where the CPU has bf16 matrix units."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import san
from pipeline.cli import job_parser, user_message
from pipeline.dataclass_args import add_dataclass_arguments
from san import precision
from san.errors import OptionError
from san.precision import cpu_bf16_units, cpu_bf16_warning
from san.predictor import Predictor
from san.settings import PredictionSettings
from san.transforms import ResizeShortestEdge

VOCABULARY = ["person", "rocket", "sky", "flag", "grass"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 keeps 8 significant bits (0.4 % per rounding); a whole forward stays well within 5 %.
SCORE_TOLERANCE = 0.05
MIN_ARGMAX_AGREEMENT = 0.99
# Issue 15's goal for a bf16 image trunk on CPU against fp32, on real photos.
MIN_CPU_BF16_AGREEMENT = 0.995
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PHOTO_VOCABULARY = ["person", "cat", "coffee cup", "rocket", "sky", "flag", "wood", "smoke", "grass", "road"]
PARITY = Path(__file__).parent / "data" / "parity"


@pytest.fixture(scope="module")
def tiny() -> san.SAN:
    torch.manual_seed(0)
    return san.build_san("san_tiny").eval()


@pytest.fixture(scope="module")
def tiny_parity() -> san.SAN:
    return san.load_official(PARITY / "checkpoint.pth", PARITY / "config.json")


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
    reduced = Predictor(tiny, VOCABULARY, device="cuda", settings=PredictionSettings(dtype=dtype)).class_scores(
        [photo]
    )[0]
    assert_close_to_float32(reference, reduced)


def test_fp16_on_cpu_is_refused_with_advice(tiny: san.SAN) -> None:
    from pipeline.label.job import LabelOptions  # imports Ray: not at module level, for GPU machines without it

    with pytest.raises(OptionError, match="^dtype fp16 needs a GPU.*use fp32, or bf16") as error:
        Predictor(tiny, VOCABULARY, device="cpu", settings=PredictionSettings(dtype="fp16"))
    parser = job_parser("label.py", "Label.")
    add_dataclass_arguments(parser, LabelOptions)
    arguments = parser.parse_args(["--vocab", "v.txt", "--output", "out", "--dtype", "fp16"])
    assert user_message(error.value, arguments).startswith("--dtype fp16 needs a GPU"), "the label job names its flag"


def test_cpu_bf16_units_are_named_by_their_cpu_flags() -> None:
    assert set(cpu_bf16_units()) <= {"amx_bf16", "avx512_bf16"}
    assert (cpu_bf16_warning() is None) == bool(cpu_bf16_units())


def test_cpu_bf16_without_units_warns_and_still_labels(monkeypatch: pytest.MonkeyPatch, photo: np.ndarray) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ())
    torch.manual_seed(0)
    model = san.build_san("san_tiny").eval()  # its own: the predictor casts the image trunk in place
    with pytest.warns(RuntimeWarning, match="no AMX or AVX512-BF16 units.*use fp32 here"):
        predictor = Predictor(
            model,
            VOCABULARY,
            device="cpu",
            settings=PredictionSettings(dtype="bf16", resize=ResizeShortestEdge(96, 96)),
        )
    assert model.clip_features.conv1.weight.dtype == torch.bfloat16
    assert model.side_adapter.mask_decoder.query_mlp.layers[0].weight.dtype == torch.float32
    prediction = predictor.predict([photo[::8, ::8]])[0]
    assert prediction.label_map.shape == (64, 64) and prediction.scores.dtype == np.float32


@pytest.mark.skipif(not cpu_bf16_units(), reason="the CPU has no bf16 matrix units (AMX or AVX512-BF16)")
def test_cpu_bf16_labels_photos_like_fp32(tiny_parity: san.SAN) -> None:
    """The parity model (trained-shape tiny SAN) with a bf16 image trunk labels real photos like fp32."""
    bf16 = copy.deepcopy(tiny_parity)
    fp32 = Predictor(tiny_parity, PHOTO_VOCABULARY)
    reduced = Predictor(bf16, PHOTO_VOCABULARY, device="cpu", settings=PredictionSettings(dtype="bf16"))
    for name in PHOTOS:
        photo = np.ascontiguousarray(getattr(data, name)())
        reference, scores = fp32.class_scores([photo])[0], reduced.class_scores([photo])[0]
        assert (scores - reference).abs().max().item() <= SCORE_TOLERANCE * max(1.0, reference.abs().max().item())
        agreement = (scores.argmax(0) == reference.argmax(0)).double().mean().item()
        assert agreement >= MIN_CPU_BF16_AGREEMENT, f"{name}: bf16 labels {agreement:.3%} of the pixels as fp32"
