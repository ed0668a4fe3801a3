"""Debian's Chromium, headless, driven through chromium-driver by selenium: the real browser the
web console is tested in (``make test`` installs both packages)."""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium (the caller quits it). Selenium is told the driver's path and kept
    offline, so it never looks for a driver on the network."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "chromium and chromium-driver are not installed (make test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--autoplay-policy=no-user-gesture-required",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float, what: str) -> Any:
    """WebDriverWait: the browser is asked again every 50 ms until ``condition`` holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, f"timed out waiting for {what}")


def page_errors(driver: Any) -> list[str]:
    """The page's JavaScript errors (console entries of level SEVERE)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
