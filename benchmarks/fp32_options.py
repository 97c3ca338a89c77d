"""fp32 options that might shrink the CPU work: ``torch.compile``, channels-last, and the share of the
post-processing (the upper bound of what fusing it could save).

One process, one image, the variants taking turns every round (so that load from other processes falls
on all alike); best and median of ``--repeats`` rounds after a warm-up round, and each variant's max abs
difference to the baseline's scores. Variants:

* ``baseline``: ``model.predict_scores`` as shipped (``SAN_CPU_KERNELS=auto``: on x86 CPUs with AVX-512, linear
  layers and attention through oneDNN, ``san.modeling.cpu_kernels``; PyTorch's own kernels on AVX2-only CPUs);
* ``pytorch_kernels``: the same with PyTorch's own CPU kernels (``SAN_CPU_KERNELS=pytorch``: MKL products,
  the fused attention kernel);
* ``onednn_kernels``: the same with the oneDNN float32 swap forced (``SAN_CPU_KERNELS=onednn``: on an AVX2-only
  CPU, what the swap would cost there);
* ``channels_last``: the model's 4-D weights (patch embeddings, 1x1 convs) in channels-last memory format;
* ``compile``: ``model.compile()`` (TorchInductor; compilation happens in the warm-up round, timed apart);
* ``postprocess``: the post-processing alone (upsampling, sigmoid, class weighting at the image size), on the
  baseline's outputs.

    python benchmarks/fp32_options.py --variants baseline pytorch_kernels onednn_kernels channels_last compile \\
        postprocess \\
        --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import cpu_description, emit

import san
from san.modeling.postprocess import semantic_scores

VOCABULARY = ["person", "car", "tree", "sky", "road", "building", "grass", "dog", "cat", "water"]
VARIANTS = ("baseline", "pytorch_kernels", "onednn_kernels", "channels_last", "compile", "postprocess")
KERNEL_VARIANTS = {"pytorch_kernels": "pytorch", "onednn_kernels": "onednn"}


def with_kernels(setting: str, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``run()`` with ``SAN_CPU_KERNELS=setting``."""
    before = os.environ.get("SAN_CPU_KERNELS")
    os.environ["SAN_CPU_KERNELS"] = setting
    try:
        return run()
    finally:
        if before is None:
            del os.environ["SAN_CPU_KERNELS"]
        else:
            os.environ["SAN_CPU_KERNELS"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="san_vit_b_16")
    parser.add_argument("--size", type=int, default=640, help="square image side (default 640)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = san.build_san(args.preset).eval()
    generator = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8, generator=generator)
    size = (args.size, args.size)
    with torch.inference_mode():
        model.text_classifier(VOCABULARY)
        batch = model.normalize_and_pad([image])
        out = model(batch, VOCABULARY)
    mask_preds, mask_logits = out.mask_preds[-1][0], out.mask_logits[-1][0]
    models = {"baseline": model}
    if "channels_last" in args.variants:
        models["channels_last"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if "compile" in args.variants:
        models["compile"] = copy.deepcopy(model)
        models["compile"].compile()
    runners = {name: (lambda m=m: m.predict_scores([image], VOCABULARY)[0]) for name, m in models.items()}
    for variant, setting in KERNEL_VARIANTS.items():
        if variant in args.variants:
            runners[variant] = lambda shipped=runners["baseline"], setting=setting: with_kernels(setting, shipped)
    if "postprocess" in args.variants:
        runners["postprocess"] = lambda: semantic_scores(mask_preds, mask_logits, batch.shape[-2:], size, size)
    reference = model.predict_scores([image], VOCABULARY)[0]
    if "baseline" not in args.variants:
        del runners["baseline"]
    times: dict[str, list[float]] = {name: [] for name in runners}
    differences: dict[str, float] = {}
    names = list(runners)
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up (and compilation)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            started = time.perf_counter()
            scores = runners[name]()
            seconds = time.perf_counter() - started
            if round_:
                times[name].append(seconds)
            else:
                differences[name] = (scores - reference).abs().max().item()
                print(f"warm-up {name}: {seconds:.2f} s", flush=True)
    base = min(times["baseline"]) if "baseline" in times else None
    lines = [
        f"### fp32 options on CPU ({time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        f"{args.preset}, random weights, one {args.size}x{args.size} image, {len(VOCABULARY)} classes, "
        f"{args.threads} threads, torch {torch.__version__}, CPU {cpu_description()}; variants take turns, best and "
        f"median of {args.repeats} rounds after a warm-up round; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end. "
        "`postprocess` is the post-processing alone (its share of the baseline bounds what fusing it can save).",
        "",
        "| variant | s best | s median | vs baseline | max abs diff to baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        best = min(times[name])
        ratio = "" if base is None else f"{best / base:.1%} of it" if name == "postprocess" else f"{base / best:.2f}x"
        lines.append(
            f"| {name} | {best:.3f} | {statistics.median(times[name]):.3f} | {ratio} | {differences[name]:.1e} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
