"""Headless Chromium driven by Selenium with Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them): the browser tests skip, saying what is missing, where they are not installed."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"


def headless_chrome(width: int = 1400, height: int = 900):
    """A Selenium Chrome driver on the installed Chromium, or skip the test naming what is missing.

    The driver is the installed ``chromedriver``, given to Selenium by path, so Selenium Manager (which
    would download a driver) never runs.
    """
    browser, driver_path = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    if browser is None or driver_path is None:
        pytest.skip(
            "headless browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver "
            f"(missing: {', '.join(n for n, p in ((CHROMIUM, browser), (CHROMEDRIVER, driver_path)) if p is None)})"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver_path))
