"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium): load
it, place orders from it, and watch their sagas reach their final state live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagastack.browser import texts, wait
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed


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
