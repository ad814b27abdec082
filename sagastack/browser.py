"""Debian's chromium, headless, driven by Selenium: the dashboard test and the docs'
screenshots. The flags are the ones this kind of machine needs (no sandbox as root, no
background networking to hosts it cannot reach)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def chromium_paths() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def open_chromium() -> Any:
    """A Selenium driver of a fresh headless chromium; RuntimeError if it is not installed."""
    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(
            "Debian's chromium and chromium-driver are not installed:"
            " apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    profile = tempfile.mkdtemp(prefix="saga-chromium-")
    atexit.register(shutil.rmtree, profile, ignore_errors=True)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def wait(driver: Any, condition: Any, timeout: float = 30, what: str = "") -> Any:
    """Poll ``condition``; the page re-renders live, so a vanished element means "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(condition, message=what)


def texts(driver: Any, selector: str, attribute: str | None = None) -> list[str]:
    """Texts (or an attribute) of every match, read in one go inside the page."""
    script = (
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent)"
    )
    result: list[str] = driver.execute_script(script, selector, attribute)
    return result
