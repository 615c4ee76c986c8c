"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

The page must load with no console error, show exactly what `GET /api/realtime` answers,
and change by itself when new events arrive. A screenshot lands in test-artifacts/.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import missing_dependency

from clickstream.api.server import run_in_background
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if CHROMIUM is None:
        missing_dependency("Debian's chromium is not installed (.ci/run installs it)")


def lines(*views: tuple[str, str, str]) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event": "ProductView",
                "messageid": str(uuid.uuid4()),
                "userid": user,
                "properties": {"productid": product},
                "context": {"source": platform},
            }
        )
        for user, product, platform in views
    ]


def on_page(page) -> dict:
    """What the page shows, in the API's terms."""
    return page.evaluate(
        """() => ({
            count: Number(document.getElementById("active-count").textContent.replace(/,/g, "")),
            users: [...document.querySelectorAll("#users-list li")].map((li) => li.textContent),
            categories: [...document.querySelectorAll("#categories [data-category]")].map(
                (g) => [g.dataset.category, Number(g.dataset.views)]),
            platforms: [...document.querySelectorAll("#platforms [data-platform]")].map(
                (li) => [li.dataset.platform, Number(li.dataset.views)]),
            late: Number(document.getElementById("late-count").textContent.replace(/,/g, "")),
            window: document.getElementById("window").textContent,
        })"""
    )


def from_api(url: str) -> dict:
    body = httpx.get(f"{url}/api/realtime", timeout=5).json()
    return {
        "count": body["active_users"]["count"],
        "users": body["active_users"]["users"],
        "categories": [[c["category"], c["views"]] for c in body["categories"]],
        "platforms": [[p["platform"], p["views"]] for p in body["platforms"]],
        "late": body["late_events"],
        "window": "5 minutes" if body["window_seconds"] == 300 else body["window_seconds"],
    }


def wait_until_page_shows(page, url: str, users: list[str], timeout: float = 15) -> dict:
    """Wait for the page to list `users`, then check it equals the API at that moment."""
    page.wait_for_function(
        "users => JSON.stringify([...document.querySelectorAll('#users-list li')]"
        ".map((li) => li.textContent)) === JSON.stringify(users)",
        arg=users,
        timeout=timeout * 1000,
    )
    shown = on_page(page)
    assert shown == from_api(url)
    return shown


def test_the_dashboard_shows_the_api_numbers_and_follows_new_events(pipeline):
    from playwright.sync_api import sync_playwright

    with connect(pipeline.settings) as conn:
        upsert_products(conn, [("product-1", "category-1"), ("product-2", "category-2")])
    pipeline.produce_views(
        lines(
            ("user-1", "product-1", "desktop"),
            ("user-2", "product-1", "ios"),
            ("user-2", "product-2", "ios"),
        )
    )
    server = run_in_background(pipeline.settings, port=0)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                problems: list[str] = []
                page.on(
                    "console",
                    lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
                )
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(server.url + "/")

                shown = wait_until_page_shows(page, server.url, ["user-1", "user-2"])
                assert shown["categories"] == [["category-1", 2], ["category-2", 1]]
                assert shown["platforms"] == [["ios", 2], ["desktop", 1]]
                assert page.locator("#state").text_content() == "live"
                assert page.locator("#as-of").get_attribute("datetime").endswith("Z")

                pipeline.produce_views(
                    lines(("user-10", "product-2", "android"), ("user-3", "product-9", "web"))
                )
                shown = wait_until_page_shows(
                    page, server.url, ["user-1", "user-2", "user-3", "user-10"]
                )
                assert shown["count"] == 4
                assert ["(not in catalog)", 1] in shown["categories"]
                assert shown["platforms"][0] == ["ios", 2]
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                assert problems == []
            finally:
                browser.close()
    finally:
        server.stop()


def test_the_dashboard_loads_nothing_from_elsewhere(pipeline):
    server = run_in_background(pipeline.settings, port=0)
    try:
        page = httpx.get(server.url + "/", timeout=5)
        assert page.status_code == 200
        assert "http://" not in page.text.replace(server.url, "")
        assert "https://" not in page.text
        for name in ("dashboard.js", "dashboard.css", "favicon.svg"):
            asset = httpx.get(f"{server.url}/static/{name}", timeout=5)
            assert asset.status_code == 200, name
            assert "https://" not in asset.text, name
        assert httpx.get(f"{server.url}/static/..%2Fapp.py", timeout=5).status_code == 404
    finally:
        server.stop()
