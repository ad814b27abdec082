"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium): load
it, place orders from it, and watch their sagas reach their final state live."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed

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


def open_browser() -> Any:
    """A headless Debian chromium under Selenium, or a skip (a failure in CI) without it."""
    paths = chromium_paths()
    if paths is None:
        message = (
            "Debian's chromium and chromium-driver are not installed (`make test` installs them as root)"
        )
        if os.environ.get("SAGA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='saga-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()


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


def place_from_page(driver: Any, customer: str, product: str, quantity: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait(
        driver,
        lambda d: (
            product
            in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#place-product option")]
        ),
        what=f"product {product} offered in the form",
    )
    field = driver.find_element(By.ID, "place-customer")
    field.clear()
    field.send_keys(customer)
    Select(driver.find_element(By.ID, "place-product")).select_by_value(product)
    qty = driver.find_element(By.ID, "place-qty")
    qty.clear()
    qty.send_keys(str(quantity))
    driver.find_element(By.ID, "place-submit").click()


def test_place_an_order_in_the_page_and_watch_its_saga_finish(
    browser: Any, system: System, client: SagaClient, uid: UniqueIds, run_root: Path
) -> None:
    from selenium.webdriver.common.by import By

    products, customers = seed(client, uid, {"globe": ("6.00", 3)}, {"max": "20.00", "ned": "1.00"})
    globe = products["globe"]
    browser.get(f"{system.url('order_svc')}/dashboard")
    wait(browser, lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"), what="live stream")

    place_from_page(browser, customers["max"], globe, 2)
    wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "saga-status").text == "APPROVED"
            and d.find_elements(By.CSS_SELECTOR, '#swimlanes g.event[data-type="InventoryCommitted"]')
        ),
        what="the saga reaches APPROVED and InventoryCommitted in the swimlanes, live",
    )
    lanes = {
        e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#swimlanes g.event")
    }
    assert {"OrderCreated", "InventoryReserved", "PaymentCompleted", "OrderApproved"} <= lanes
    assert not browser.find_elements(By.CSS_SELECTOR, "#swimlanes g.event.compensating")
    wait(
        browser,
        lambda d: (
            [c.text for c in d.find_elements(By.CSS_SELECTOR, f'#stock tr[data-product="{globe}"] td')][2:]
            == ["1", "0", "2"]
        ),
        what="stock table shows 1 available, 2 sold",
    )

    # a rejected one: the page alone says why, and that it was compensated
    place_from_page(browser, customers["ned"], globe, 1)
    wait(
        browser,
        lambda d: (
            d.find_element(By.ID, "saga-status").text == "REJECTED"
            and d.find_elements(
                By.CSS_SELECTOR, '#swimlanes g.event.compensating[data-type="InventoryReleased"]'
            )
        ),
        what="the rejected saga with its compensation marked",
    )
    assert "insufficient funds" in texts(browser, "#saga-verdict")[0]
    assert texts(browser, "#saga-compensated")[0].startswith("everything owed was compensated")
    browser.save_screenshot(str(run_root / "dashboard.png"))

    # the list filters by status
    browser.find_element(By.CSS_SELECTOR, '#filters button[data-status="REJECTED"]').click()
    wait(
        browser,
        lambda d: (
            all(td.text == "REJECTED" for td in d.find_elements(By.CSS_SELECTOR, "#orders td.status"))
            and d.find_elements(By.CSS_SELECTOR, "#orders td.status")
        ),
        what="only rejected orders listed",
    )
