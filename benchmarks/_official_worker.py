"""The official side of ``speed_vs_official.py``; runs in the official code's Python environment, never in
this project's (the official package is also named ``san``).

    SANREF=<official tree> python _official_worker.py HARNESS OUT SIZE THREADS

``HARNESS`` is the folder with ``official_san.py`` and its detectron2 stand-ins (the set-up that
``speed_vs_official.py --help`` describes); the official model code itself runs unmodified. Builds the
official SAN (ViT-B/16 as released, random weights, seed 0), writes ``OUT/checkpoint.pth`` and
``OUT/config.json`` (the same weights in the official release layout), ``OUT/input.pt`` (a random
``SIZE`` x ``SIZE`` image and the vocabulary) and ``OUT/sem_seg.pt`` (the official output), prints
``ready``, then runs one forward per line read on stdin and prints its seconds.
"""

import json
import os
import sys
import time

harness, out, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, harness)
import official_san as off  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402

VOCABULARY = ["person", "car", "tree", "sky", "road", "building", "grass", "dog", "cat", "water"]

torch.set_num_threads(threads)
os.makedirs(out, exist_ok=True)
clip_cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-B-16")))
clip_cfg["quick_gelu"] = True  # OpenAI's ViT-B/16, as the release uses
clip_name, vit_name = "SAN-ViT-B-16-speed", "vit_w240n6d8_patch16"
off.register_clip_cfg(clip_name, clip_cfg, os.path.join(out, "model_configs"))
off.register_side_vit(vit_name, embed_dim=240, depth=8, num_heads=6, patch_size=16)
cfg = off.build_cfg(clip_name, vit_name)
torch.manual_seed(0)
model = off.SAN(cfg).eval()
config = {
    "MODEL.META_ARCHITECTURE": "SAN",
    "MODEL.SAN": cfg.MODEL.SAN.to_dict(),
    "MODEL.SIDE_ADAPTER": cfg.MODEL.SIDE_ADAPTER.to_dict(),
    "open_clip_model_name": clip_name,
    "open_clip_model_cfg": clip_cfg,
    "pixel_mean_0_255": [float(x) for x in model.pixel_mean.flatten()],
    "pixel_std_0_255": [float(x) for x in model.pixel_std.flatten()],
    "template_set": cfg.MODEL.SAN.CLIP_TEMPLATE_SET,
    "vocabulary": VOCABULARY,
}
torch.save({"model": model.state_dict()}, os.path.join(out, "checkpoint.pth"))
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
image = (torch.rand(3, size, size, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
torch.save({"image": image, "vocabulary": VOCABULARY}, os.path.join(out, "input.pt"))
batch = [{"image": image.float(), "height": size, "width": size, "vocabulary": VOCABULARY}]
with torch.no_grad():
    torch.save(model(batch)[0]["sem_seg"], os.path.join(out, "sem_seg.pt"))
print("ready", flush=True)
for _ in sys.stdin:
    started = time.perf_counter()
    with torch.no_grad():
        model(batch)
    print(f"{time.perf_counter() - started:.6f}", flush=True)
