"""Screenshot of the review App with masks, from a real run: the sample photos labeled with the smoke model
(``jobs/label.py --smoke-test``), loaded as ``jobs/review.py`` loads them, the App opened in headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium from the test extras).

    python scripts/app_screenshot.py --output docs/images/review_app.png

The run is labeled into ``--run`` unless it already holds one; the dataset goes into a private, temporary
FiftyOne database, so the user's datasets are untouched. The PNG is reduced to a 256-colour palette.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="app-screenshot-db-"))
os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"app-screenshot-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import fiftyone as fo  # noqa: E402
from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from pipeline.label.job import LabelOptions, run_label_job  # noqa: E402
from pipeline.review.app import dataset_url, launch  # noqa: E402
from pipeline.review.dataset import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def labeled_run(folder: Path) -> Path:
    """The smoke-model run of ``samples/images`` in ``folder`` (labeled now unless already there)."""
    if not (folder / "manifest.json").is_file():
        options = LabelOptions(
            vocab=str(ROOT / "samples" / "vocab.txt"),
            input=str(ROOT / "samples" / "images"),
            output=str(folder),
            smoke_test=True,
            progress=False,
        )
        run_label_job(options)
    return folder


def chrome(width: int, height: int) -> webdriver.Chrome:
    """Headless Chromium through the installed chromedriver (given by path: Selenium Manager never runs)."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def screenshot(dataset: fo.Dataset, output: Path, port: int, width: int, height: int) -> None:
    """Open the dataset's App page, wait for a tile per sample, dismiss FiftyOne's promotion pop-up, save."""
    driver = chrome(width, height)
    try:
        launch(dataset, port=port)
        driver.get(dataset_url(dataset, f"http://127.0.0.1:{port}/"))
        WebDriverWait(driver, 180).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-cy="looker"]')) >= len(dataset)
        )
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Dismiss']"):
            button.click()
        time.sleep(20)  # the tiles draw their images and masks after they appear (seconds on a busy machine)
        raw = output.with_suffix(".raw.png")
        driver.save_screenshot(str(raw))
    finally:
        driver.quit()
        fo.close_app()
    Image.open(raw).convert("RGB").quantize(256).save(output, optimize=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "review_app.png")
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "app-screenshot", help="labeling run folder")
    parser.add_argument("--port", type=int, default=5161)
    parser.add_argument("--size", default="1400x800", help="browser window WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    dataset = load_run(labeled_run(args.run), name=f"review-{args.run.name}", overwrite=True)
    screenshot(dataset, args.output, args.port, width, height)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
