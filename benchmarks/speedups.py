"""Before/after timings of this project's speed-ups over the official implementation's formulation.

1. Recognition head: the official code runs each CLIP block on all Q+1+L tokens with a
   (Q+1+L)^2 additive mask (-100 on excluded entries); here the CLS/patch rows run CLIP's ordinary
   attention and only the Q [SLS] rows attend, with the bias, to [self, patches].
2. Text encoder: the official code runs the full 77-token context; here each batch is cut after its
   longest prompt's end token (exact under the causal mask).
3. Loading a checkpoint (a labeling worker's start): building the model with random weights and then
   copying the checkpoint in, against building it on the meta device and assigning the checkpoint's
   tensors (``san.load_checkpoint``).

Both "before" variants are written out below from the official formulation and run on the same
weights; the script also reports the largest difference between before and after.

    python benchmarks/speedups.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _report import emit
from safetensors.torch import load_file

import san
from san.modeling.clip import downsample_attn_bias

VOCABULARY = ["person", "cat", "coffee cup", "rocket", "sky", "flag", "wood", "smoke", "grass", "road"]


def official_recognition_head(
    head: san.modeling.clip.RecognitionHead, features, attn_bias: torch.Tensor
) -> torch.Tensor:
    """The official formulation: one (Q+1+L)^2 mask with -100 entries, every block on all tokens."""
    bias = downsample_attn_bias(attn_bias, features.grid, head.downsample)  # [B, H, Q, L]
    batch, heads, q, length = bias.shape
    n = q + 1 + length
    mask = torch.zeros(batch, heads, n, n)
    mask[:, :, :, :q] = -100
    mask[:, :, torch.arange(q), torch.arange(q)] = 0
    mask[:, :, :q, q] = -100
    mask[:, :, :q, q + 1 :] = bias
    mask = mask.reshape(batch * heads, n, n)
    tokens = features.tokens[-1]
    x = torch.cat([tokens[:, :1].expand(-1, q, -1), tokens], dim=1)
    for block in head.resblocks:
        y = block.ln_1(x)
        x = x + block.ls_1(block.attn(y, y, y, need_weights=False, attn_mask=mask)[0])
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    x = head.ln_post(x[:, :q]) @ head.proj
    return torch.nn.functional.normalize(x, dim=-1)


def load_with_random_init(path: Path, config: san.SANConfig) -> san.SAN:
    """The usual way: build (random initialisation), then copy the checkpoint's weights in."""
    model = san.SAN(config)
    model.load_state_dict(load_file(path))
    return model.eval()


def largest_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    b_state = b.state_dict()
    return max((value - b_state[key]).abs().max().item() for key, value in a.state_dict().items())


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - started) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="san_vit_b_16")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = san.build_san(args.preset).eval()
    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    rows = []
    with torch.inference_mode():
        padded = model.normalize_and_pad([image])
        features = model.clip_features(model.clip_input(padded))
        biases = model.side_adapter(padded, features).attn_biases[-1]  # one tensor per recognition layer
        before, reference = timed(
            lambda: official_recognition_head(model.clip_recognition, features, biases[0]), args.repeats
        )
        after, ours = timed(lambda: model.clip_recognition(features, biases), args.repeats)
        rows.append(("recognition head, 1 image", before, after, (reference - ours).abs().max().item()))

        classifier = model.text_classifier
        prompts = [t.format(w) for t in classifier.templates for w in VOCABULARY]
        tokens = classifier.tokenizer(prompts)
        before, reference = timed(lambda: classifier.text_encoder.encode_text(tokens, normalize=True), args.repeats)
        after, ours = timed(lambda: classifier.encode_prompts(prompts), args.repeats)
        rows.append((f"text embeddings, {len(prompts)} prompts", before, after, (reference - ours).abs().max().item()))
    with tempfile.TemporaryDirectory() as folder:
        path = san.save_checkpoint(model, Path(folder) / "model.safetensors")
        before, reference = timed(lambda: load_with_random_init(path, model.config), args.repeats)
        after, ours = timed(lambda: san.load_checkpoint(path), args.repeats)
        rows.append(("model from a checkpoint file", before, after, largest_weight_difference(reference, ours)))
    lines = [
        f"### Speed-ups, before and after ({time.strftime('%Y-%m-%d')})",
        "",
        f"{args.preset}, random weights, {args.size}x{args.size} image, CPU {platform.machine()} with "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, float32.",
        "",
        "| step | before (official formulation) s | after s | speed-up | max abs difference |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {name} | {b:.3f} | {a:.3f} | {b / a:.2f}x | {d:.1e} |" for name, b, a, d in rows],
        "",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
