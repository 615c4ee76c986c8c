"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

The page must load with no console error, show exactly what `GET /api/realtime` answers,
and change by itself when new events arrive. A screenshot lands in test-artifacts/, and in
the docs' images with CLICKSTREAM_SCREENSHOTS=docs/images.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import missing_dependency, screenshot_path
from hypothesis import strategies as st

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
                if docs_image := screenshot_path("dashboard.png"):
                    page.screenshot(
                        path=str(docs_image), clip={"x": 0, "y": 0, "width": 1366, "height": 520}
                    )
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


# -- names from events are text, never markup ---------------------------------------------

HOSTILE = [
    '<img src=x onerror="window.pwned=1">',
    "<script>window.pwned=1</script>",
    "</li><li>x",
    "\"'><b>bold</b>",
    "&amp; &lt;",
    "[/]",
    "[red]ios",
    "${1+1}",
    "__proto__",
    "🛒🇹🇷 shop",
    "a-very-long-category-name-🛒-that-is-cut",
]

INJECTED = """() => ({
    scripts: document.scripts.length,
    images: document.images.length,
    bold: document.querySelectorAll("main b").length,
    pwned: window.pwned === undefined ? null : window.pwned,
    nested: [...document.querySelectorAll("#users-list li, #platforms .name")].filter(
        (node) => node.children.length).length,
})"""
# The page's own script and nothing else: no element, no script run, no markup from a name.
NOTHING_INJECTED = {"scripts": 1, "images": 0, "bold": 0, "pwned": None, "nested": 0}

WHAT_IS_WRITTEN = """() => ({
    users: [...document.querySelectorAll("#users-list li")].map((li) => li.textContent),
    titles: [...document.querySelectorAll("#categories [data-category] title")].map(
        (t) => t.textContent),
    labels: [...document.querySelectorAll("#categories [data-category] text:first-of-type")].map(
        (t) => t.textContent),
    platforms: [...document.querySelectorAll("#platforms .name")].map((s) => s.textContent),
})"""


FRAGMENTS = ["<b>", "</", "<script>", "<img src=x onerror=window.pwned=1>", "&amp;", "&#60;"]
FRAGMENTS += ["[/]", "[red]", '"', "'", "`", "${x}", "\\", "🛒", "\u202e", "\x00", "\n"]
# Any text, and above all the pieces that would change meaning if they were read as markup.
NAMES = (
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), min_size=1, max_size=6)
    .map("".join)
    .filter(bool)
)


def label(name: str) -> str:
    """The bar's label: the category, cut to 17 code points and an ellipsis past 18."""
    return name if len(name) <= 18 else name[:17] + "…"


def written(snapshot: dict) -> dict:
    """What the page must write for a snapshot of the API, as text."""
    return {
        "users": snapshot["active_users"]["users"],
        "titles": [f"{c['category']}: {c['views']:,} views" for c in snapshot["categories"]],
        "labels": [label(c["category"]) for c in snapshot["categories"]],
        "platforms": [p["platform"] for p in snapshot["platforms"]],
    }


def browser_page(playwright):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
    )
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    return browser, page, problems


def test_hostile_names_from_events_and_the_catalog_are_shown_as_text(pipeline):
    from playwright.sync_api import sync_playwright

    with connect(pipeline.settings) as conn:
        upsert_products(conn, [(f"product-{i}", name) for i, name in enumerate(HOSTILE)])
    views = [(f"user-{name}", f"product-{i}", name) for i, name in enumerate(HOSTILE)]
    pipeline.produce_views(lines(*views))
    server = run_in_background(pipeline.settings, port=0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = httpx.get(f"{server.url}/api/realtime", timeout=5).json()
            if body["active_users"]["count"] == len(HOSTILE) and not body["catching_up"]:
                break
            time.sleep(0.2)
        assert body["active_users"]["count"] == len(HOSTILE), body
        with sync_playwright() as playwright:
            browser, page, problems = browser_page(playwright)
            try:
                page.goto(server.url + "/")
                shown = wait_until_page_shows(page, server.url, body["active_users"]["users"])
                assert sorted(shown["users"]) == sorted(user for user, _, _ in views)
                assert page.evaluate(WHAT_IS_WRITTEN) == written(body)
                assert page.evaluate(INJECTED) == NOTHING_INJECTED
                assert problems == []
            finally:
                browser.close()
    finally:
        server.stop()


def test_any_string_as_a_name_reaches_the_dashboard_as_text(pipeline):
    """Generated names, control characters included, drawn by the page's own stream handler
    from the API's own JSON; the real stream is held back so that only these are drawn."""
    from hypothesis import given
    from hypothesis import settings as hypothesis_settings
    from playwright.sync_api import sync_playwright

    from clickstream.api.realtime import render
    from clickstream.realtime.source import LiveState
    from clickstream.realtime.window import SlidingWindow

    server = run_in_background(pipeline.settings, port=0)
    try:
        with sync_playwright() as playwright:
            browser, page, problems = browser_page(playwright)
            try:
                page.route("**/api/realtime/stream", lambda route: route.fulfill(status=204))
                page.goto(server.url + "/")
                page.wait_for_function("typeof handle === 'function'")

                @hypothesis_settings(max_examples=12, deadline=None, database=None)
                @given(names=st.lists(NAMES, min_size=1, max_size=4))
                def check(names: list[str]) -> None:
                    window = SlidingWindow(300_000)
                    at = 1_800_000_000_000
                    window.add([(f"m-{i}", n, n, n, at) for i, n in enumerate(names)], at)
                    state = LiveState(window.snapshot(at), False, True, len(names))
                    body = render(state)
                    page.evaluate(
                        "block => handle(block)", "event: snapshot\ndata: " + body.decode()
                    )
                    assert page.evaluate(WHAT_IS_WRITTEN) == written(orjson.loads(body))
                    assert page.evaluate(INJECTED)["nested"] == 0

                check()
                assert page.evaluate(INJECTED) == NOTHING_INJECTED
                assert problems == []
            finally:
                browser.close()
    finally:
        server.stop()
