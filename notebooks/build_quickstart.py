"""Write ``notebooks/quickstart.ipynb`` from the cells below, without outputs (the form kept in git).

    .venv/bin/python notebooks/build_quickstart.py

Edit the cells here rather than in Jupyter, then rerun this script; ``tests/test_notebook.py`` checks that
the committed notebook has no outputs and runs it top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("quickstart.ipynb")

CELLS: list[tuple[str, str, str]] = [
    (
        "intro",
        "md",
        """\
# Quickstart: open-vocabulary pseudo-labels with SAN

This notebook runs the whole flow on the four sample photos in `samples/images`, on CPU, in a few minutes:

1. **label** them with the classes of `samples/vocab.txt` (a Ray job),
2. **look** at the label maps,
3. **measure** how much of each image each class covers,
4. **evaluate** against a (toy) ground truth,
5. **review** the run in FiftyOne,
6. **export** COCO annotations.

Each step says which command-line job does the same. Run it with the project's environment as the kernel
(`make install` creates `.venv`; e.g. `.venv/bin/pip install jupyterlab && .venv/bin/jupyter lab`).""",
    ),
    (
        "setup-md",
        "md",
        """\
## Setup

**Which model?** The notebook never downloads weights unless you ask: it uses the released `san_vit_b_16`
weights when they are already on this machine (`$SAN_WEIGHTS`, or the Hugging Face cache after one online
run of `jobs/label.py`), and otherwise the **smoke-test model**, a tiny SAN with random weights: every step
runs for real, but its labels are meaningless. `HF_HUB_OFFLINE=1` makes that check a cache lookup (offline,
huggingface_hub would otherwise spend ~30 s retrying). Set `DOWNLOAD_WEIGHTS = True` to fetch the weights
(several hundred MB) when online.

Outputs go to a new temporary folder (or `$SAN_QUICKSTART_OUT`). `RAY_ADDRESS=local` starts a private Ray
inside this kernel; set `RAY_ADDRESS` beforehand to use a running cluster instead.""",
    ),
    (
        "setup",
        "code",
        """\
import os
import tempfile
from pathlib import Path

DOWNLOAD_WEIGHTS = False  # True: download the released weights when they are not cached yet
LAUNCH_APP = False  # True: open the FiftyOne App in step 5

if not DOWNLOAD_WEIGHTS:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("RAY_ADDRESS", "local")

# The repository root: this notebook's folder's parent, wherever Jupyter was started.
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "samples" / "vocab.txt").is_file())
IMAGES = ROOT / "samples" / "images"
VOCAB = ROOT / "samples" / "vocab.txt"
OUT = Path(os.environ.get("SAN_QUICKSTART_OUT") or tempfile.mkdtemp(prefix="san-quickstart-"))
RUN = OUT / "labels"
print(f"images: {IMAGES}\\noutputs: {OUT}")
print(VOCAB.read_text())""",
    ),
    (
        "label-md",
        "md",
        """\
## 1. Label the images

`run_label_job` is what `jobs/label.py` runs: it decodes the images in Ray tasks, labels them in a pool of
model actors (one here) and writes Parquet shards, `coco.json` and `manifest.json` into `RUN`. The same from
a shell:

```bash
.venv/bin/python jobs/label.py --vocab samples/vocab.txt --input samples/images --output out/labels --keep-regions
# add --smoke-test to use the tiny random model
```

`keep_regions` also keeps each image's regions (SAN's masks and their embeddings, before the one product that
sees the vocabulary), so that step 7 can search the run by text and relabel it with a new vocabulary without
the image model.""",
    ),
    (
        "label",
        "code",
        """\
import ray

import san
from pipeline.label.job import LabelOptions, run_label_job

try:
    weights = san.resolve_official_weights("san_vit_b_16")
    smoke_test = False
    MODEL_USED = f"released san_vit_b_16 weights ({weights})"
except san.WeightsUnavailableError as error:
    smoke_test = True
    MODEL_USED = "smoke-test model (tiny SAN with random weights: the labels are meaningless)"
    print(f"No released weights on this machine ({type(error.__cause__ or error).__name__}).")
    print("To use them: set SAN_WEIGHTS=/path/to/san_vit_b_16.pth, or DOWNLOAD_WEIGHTS = True when online.\\n")

manifest = run_label_job(
    LabelOptions(
        vocab=str(VOCAB),
        input=str(IMAGES),
        output=str(RUN),
        model="san_vit_b_16",
        smoke_test=smoke_test,
        workers=(1, 1),  # one model copy is plenty for four images
        keep_regions="fp32",  # for step 7: search and relabel without the image model
        progress=False,
        command=["notebooks/quickstart.ipynb"],
    )
)
ray.shutdown()  # frees the model actor's memory
print(f"model used: {MODEL_USED}")
print(f"counts: {manifest['counts']}, took {manifest['timings']['seconds']:.1f} s")""",
    ),
    (
        "show-md",
        "md",
        """\
## 2. Look at the label maps

Each Parquet row holds the image's label map as a PNG (pixel = class index in the vocabulary, 255 =
unlabeled); `decode_label_map_png` turns it back into an array. Colours are per class, the legend lists the
classes present with their share of the image.""",
    ),
    (
        "show",
        "code",
        """\
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from pipeline.label.images import read_image_file
from pipeline.outputs import RunOutput
from pipeline.segments import decode_label_map_png, unlabeled_value

CLASSES = manifest["vocabulary"]["names"]
COLOURS = plt.get_cmap("tab10")(np.arange(len(CLASSES)) % 10)[:, :3]
predictions = RunOutput(RUN).read_predictions().to_pandas().sort_values("image_path", ignore_index=True)

fig, axes = plt.subplots(2, 2, figsize=(12, 9))
for ax, row in zip(axes.flat, predictions.itertuples(), strict=False):
    image = read_image_file(row.image_path) / 255.0
    label_map = decode_label_map_png(row.label_map_png)
    labeled = label_map != unlabeled_value(label_map)
    overlay = image.copy()
    overlay[labeled] = 0.45 * image[labeled] + 0.55 * COLOURS[label_map[labeled]]
    ax.imshow(overlay)
    present, counts = np.unique(label_map[labeled], return_counts=True)
    handles = [
        Patch(color=COLOURS[c], label=f"{CLASSES[c]} {100 * n / label_map.size:.0f}%")
        for c, n in sorted(zip(present, counts, strict=True), key=lambda item: -item[1])
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_title(Path(row.image_path).name)
    ax.axis("off")
fig.suptitle(MODEL_USED)
plt.tight_layout()
plt.show()""",
    ),
    (
        "areas-md",
        "md",
        """\
## 3. Per-class areas

The `segments` column holds one entry per class present in an image: its COCO RLE mask, `area` (pixels),
`bbox` and `score` (mean class score over its pixels). As a table, in percent of each image:""",
    ),
    (
        "areas",
        "code",
        """\
import pandas as pd

segments = pd.DataFrame(
    [
        {
            "image": Path(row.image_path).name,
            "class": segment["category_name"],
            "area": segment["area"],
            "percent": 100 * segment["area"] / (row.width * row.height),
            "score": segment["score"],
        }
        for row in predictions.itertuples()
        for segment in row.segments
    ]
)
areas = segments.pivot_table(index="image", columns="class", values="percent", fill_value=0.0)
areas.reindex(columns=[c for c in CLASSES if c in areas.columns]).round(1)""",
    ),
    (
        "other-md",
        "md",
        """\
### Distractors: `--other none` and `--other coco-all`

SAN gives every pixel one of the vocabulary's classes, so without help the background becomes the nearest
class. `--other` adds distractor names (COCO-Stuff's, as the official demo does); the pixels they win are
left unlabeled (255). The job's default is `coco-stuff` (the 91 background names; `none` with
`--smoke-test`). Here one photo, labeled in this kernel by the job's `Predictor` (no Ray), with no
distractors and with all 171 COCO-Stuff names. With the smoke-test model the random weights give (nearly)
every pixel to one of the 171 extra names, so the right image is (nearly) unlabeled: only the real weights
show which pixels a distractor takes. The same from a shell:

```bash
.venv/bin/python jobs/label.py --vocab samples/vocab.txt --input samples/images --output out/none --other none
.venv/bin/python jobs/label.py --vocab samples/vocab.txt --input samples/images --output out/all --other coco-all
```""",
    ),
    (
        "other",
        "code",
        """\
from pipeline.label.model_stage import SMOKE_MODEL, ModelSpec
from pipeline.vocabulary import load_vocabulary
from san.other_names import read_other_names
from san.predictor import Predictor
from san.settings import PredictionSettings

vocabulary = load_vocabulary(VOCAB)
net = ModelSpec(SMOKE_MODEL if smoke_test else "san_vit_b_16").resolved().load()
photo = read_image_file(str(IMAGES / "rocket.jpg"))
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
for ax, other in zip(axes, ["none", "coco-all"], strict=True):
    names = read_other_names(other)
    predictor = Predictor(
        net, vocabulary.prompts, vocabulary.prompt_to_class, device="cpu", settings=PredictionSettings(other=names)
    )
    label_map = predictor.predict([photo])[0].label_map
    labeled = label_map != 255
    overlay = photo / 255.0
    overlay[labeled] = 0.45 * overlay[labeled] + 0.55 * COLOURS[label_map[labeled]]
    ax.imshow(overlay)
    ax.set_title(f"--other {other}: {len(predictor.added_names)} names added, {100 * labeled.mean():.0f}% labeled")
    ax.axis("off")
fig.suptitle(MODEL_USED)
plt.tight_layout()
plt.show()
del net, predictor  # frees the model's memory""",
    ),
    (
        "evaluate-md",
        "md",
        """\
## 4. Evaluate against ground truth

**This is a toy ground truth**, made here by hand for two images: a few boxes of `sky` and the `rocket` in
`rocket.jpg`, one box on the `cat` in `chelsea.png`; every other pixel is 255 = ignored. It shows the
format and the call, not the model's quality (and with the smoke-test model the numbers are those of random
labels). Real ground truth is a folder of label PNGs matched by file name (or a COCO JSON). The same from a
shell:

```bash
.venv/bin/python jobs/evaluate.py --predictions out/labels --gt GT_DIR --gt-classes GT_CLASSES.txt
```""",
    ),
    (
        "evaluate",
        "code",
        """\
from PIL import Image

from pipeline.evaluate import evaluate_run

GT = OUT / "toy_gt"
GT_CLASSES = OUT / "toy_gt_classes.txt"
gt_names = ["sky", "rocket", "cat"]  # line v of the classes file names pixel value v
GT_CLASSES.write_text("\\n".join(gt_names) + "\\n")
boxes = {  # image stem -> (class, x0, y0, x1, y1), drawn by eye on the sample photos
    "rocket": [
        ("sky", 100, 0, 550, 110),
        ("sky", 100, 110, 175, 320),
        ("sky", 215, 110, 295, 320),
        ("sky", 345, 110, 430, 320),
        ("sky", 470, 110, 550, 320),
        ("rocket", 312, 160, 328, 380),
    ],
    "chelsea": [("cat", 60, 20, 340, 290)],
}
GT.mkdir(exist_ok=True)
sizes = {Path(row.image_path).stem: (row.height, row.width) for row in predictions.itertuples()}
for stem, items in boxes.items():
    truth = np.full(sizes[stem], 255, dtype=np.uint8)  # 255 = ignored
    for name, x0, y0, x1, y1 in items:
        truth[y0:y1, x0:x1] = gt_names.index(name)
    Image.fromarray(truth).save(GT / f"{stem}.png")

metrics = evaluate_run(RUN, str(GT), gt_classes=GT_CLASSES)
print(f"TOY ground truth, {metrics['num_images']} images, {metrics['pixels']} labeled pixels, model: {MODEL_USED}")
display(pd.DataFrame([{k: metrics[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")}]).round(1))
pd.DataFrame(
    {"IoU": [metrics[f"IoU-{c}"] for c in gt_names], "ACC": [metrics[f"ACC-{c}"] for c in gt_names]}, index=gt_names
).round(1)""",
    ),
    (
        "review-md",
        "md",
        """\
## 5. Review in FiftyOne

`load_run` makes a persistent FiftyOne dataset of the run (masks, the toy ground truth, per-image mIoU and
mean score, saved views such as `worst_miou`). FiftyOne keeps it in its database, `~/.fiftyone` unless
`FIFTYONE_DATABASE_DIR` says otherwise (the tests point it at a temporary folder). An existing dataset of the
name is replaced only with `overwrite=True`, and only if `load_run` made it. The same from a shell,
`--launch` opening the App (add `--overwrite` to load the run again):

```bash
.venv/bin/python jobs/review.py out/labels --gt GT_DIR --gt-classes GT_CLASSES.txt --launch
```""",
    ),
    (
        "review",
        "code",
        """\
import fiftyone as fo

from pipeline.review.app import launch
from pipeline.review.dataset import load_run

# overwrite=True: rerunning the notebook replaces its earlier dataset, and any edits made to it in the App
dataset = load_run(RUN, str(GT), GT_CLASSES, name="san-quickstart", overwrite=True)
print(f"dataset {dataset.name!r}: {len(dataset)} samples, database {fo.config.database_dir}")
print(f"saved views: {dataset.list_saved_views()}")
pd.DataFrame(
    {
        "image": [Path(p).name for p in dataset.values("image_path")],
        "classes present": dataset.values("classes_present"),
        "mean score": dataset.values("mean_score"),
        "mIoU (toy GT)": dataset.values("miou"),
    }
).round(3)""",
    ),
    (
        "launch-md",
        "md",
        """\
To browse the masks, set `LAUNCH_APP = True` in the setup cell (or here) and run the next cell; it serves the
App at <http://127.0.0.1:5151/> until `session.close()` or the kernel stops.""",
    ),
    (
        "launch",
        "code",
        """\
if LAUNCH_APP:
    session = launch(dataset)  # remote mode: open the address in a browser
    print(f"App: {session.url}")
else:
    print("LAUNCH_APP is False: the App was not started")""",
    ),
    (
        "export-md",
        "md",
        """\
## 6. Export COCO

`export_dataset` writes the dataset's current masks (with any edits made in the App) as COCO JSON, in the form
of the job's own `coco.json`: one RLE annotation per image and class, with area, bbox and score. Below,
pycocotools reads it back and decodes every mask. The same from a shell:

```bash
.venv/bin/python jobs/export.py out/labels --coco out/reviewed.json
```""",
    ),
    (
        "export",
        "code",
        """\
from pycocotools.coco import COCO

from pipeline.exports.reviewed import export_dataset

summary = export_dataset(dataset, OUT / "reviewed_coco.json")
coco = COCO(str(OUT / "reviewed_coco.json"))
annotations = coco.loadAnns(coco.getAnnIds())
assert all(coco.annToMask(a).sum() == a["area"] for a in annotations)  # the RLEs decode to their areas
print(f"{summary['images']} images, {summary['annotations']} annotations, {len(coco.cats)} categories")
pd.DataFrame(
    [
        {
            "image": Path(coco.imgs[a["image_id"]]["file_name"]).name,
            "class": coco.cats[a["category_id"]]["name"],
            "area": a["area"],
            "bbox": a["bbox"],
            "score": round(a["score"], 3),
        }
        for a in annotations
    ]
).head(10)""",
    ),
    (
        "iterate-md",
        "md",
        """\
## 7. Iterate on the vocabulary

The run kept its regions, so a vocabulary round needs neither the images nor the image model. First, which
images hold a thing at all? `search_run` ranks them by their best region's match to a text (the same from a
shell: `jobs/search.py RUN "spaceship"`). Then edit the vocabulary and relabel: `run_relabel_job` writes a
complete new run (the same from a shell: `jobs/relabel.py RUN --vocab new.txt --output RUN2`). Only the text
tower runs; with fp32 regions the new label maps are those a fresh labeling run with the new vocabulary writes.
(With the smoke-test model the classes are random, so the numbers show the mechanics, not quality.)""",
    ),
    (
        "iterate",
        "code",
        """\
from pipeline.region_search import search_run
from pipeline.relabel.job import run_relabel_job
from pipeline.relabel.options import RelabelOptions

hits = search_run(RUN, "spaceship", top=4)
print(pd.DataFrame([{"image": Path(h.image_path).name, "score": round(h.score, 3), "box": h.box} for h in hits]))

NEW_VOCAB = OUT / "vocab_v2.txt"
NEW_VOCAB.write_text("astronaut\\nwoman\\ncat\\nmug: coffee cup\\nrocket: spaceship\\nsky\\n")  # person split in two
relabeled = run_relabel_job(RelabelOptions(run=str(RUN), vocab=str(NEW_VOCAB), output=str(OUT / "labels_v2"),
                                           progress=False, command=["notebooks/quickstart.ipynb"]))
ray.shutdown()
v2 = RunOutput(OUT / "labels_v2").read_predictions(["image_path", "segments"]).to_pylist()
areas = [(Path(row["image_path"]).name, s["category_name"], s["area"]) for row in v2 for s in row["segments"]]
table = pd.DataFrame(areas, columns=["image", "class", "area"])
table.pivot_table(index="image", columns="class", values="area", fill_value=0)  # pixels per class, new vocabulary""",
    ),
    (
        "next-md",
        "md",
        """\
## Next

Point `jobs/label.py` at your own folder, bucket, Parquet or WebDataset shards with your own vocabulary; run
it on a Ray cluster with `ray job submit` (README: *On a Ray cluster*). The outputs of this notebook stay in
`OUT` (a temporary folder) until you delete it.""",
    ),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook(
        metadata={
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    for cell_id, kind, source in CELLS:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = cell_id  # stable ids: rebuilding gives the same file
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


if __name__ == "__main__":
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
