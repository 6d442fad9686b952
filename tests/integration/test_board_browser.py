"""The board in real headless Chromium (Debian's, driven by playwright; never a download).

A node runs the demo pipeline; the browser loads the board, sees a stage change arrive
without a reload, opens a task's timeline, and shows a title's markup as text with no
script run. `CONVEYOR_BOARD_SCREENSHOTS=1` also writes `docs/img/board.png` and
`docs/img/task.png`:

    CONVEYOR_BOARD_SCREENSHOTS=1 .venv/bin/pytest -p no:cacheprovider \
        tests/integration/test_board_browser.py
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.board_support import XSS_TITLE, BoardNode, board_node
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(120)

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 20_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
if not shutil.which(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM}: run scripts/install-chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoardNode]:
    with board_node(tmp_path_factory.mktemp("board-browser"), board={"refresh_s": 0.2}) as running:
        running.submit(XSS_TITLE)
        running.submit("Add a login page", description="Users sign in with <script>x()</script>")
        running.wait_stage("DEMO-1", "analysis", approve=False)
        wait_until(
            lambda: "awaiting approval" in running.task("DEMO-1")["last_reason"],
            what="DEMO-1 to await approval",
        )
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.errors = errors
    try:
        yield opened
    finally:
        context.close()


def screenshots() -> bool:
    return os.environ.get("CONVEYOR_BOARD_SCREENSHOTS") == "1"


def test_board_renders_the_pipeline_and_shows_markup_as_text(node: BoardNode, page: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{node.base_url}/board")
    card = page.locator('.column[data-stage="analysis"] .card[data-task="DEMO-1"]')
    card.wait_for()
    assert card.locator(".title").text_content() == XSS_TITLE
    assert page.locator("#columns img, #columns b, #columns script").count() == 0
    assert page.locator("#health").text_content() == "healthy"
    page.locator("#live.ok").wait_for()
    assert page.title() == "Conveyor board"  # the onerror never ran
    assert dialogs == []
    assert page.errors == []


def test_stage_change_appears_without_a_reload(node: BoardNode, page: Any) -> None:
    page.goto(f"{node.base_url}/board")
    page.locator('.column[data-stage="analysis"] .card[data-task="DEMO-1"]').wait_for()
    page.locator("#live.ok").wait_for()
    page.evaluate("window.__sameDocument = true")
    assert node.command("approve", "DEMO-1")["ok"]
    page.locator('.column[data-stage="architecture"] .card[data-task="DEMO-1"]').wait_for()
    assert page.evaluate("window.__sameDocument") is True
    if screenshots():
        node.wait_stage("DEMO-2", "analysis", approve=False)
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS_IMG / "board.png"), full_page=True)
    assert page.errors == []


def test_task_page_shows_its_timeline(node: BoardNode, page: Any) -> None:
    node.wait_stage("DEMO-1", "architecture", "development", "review", approve=False)
    page.goto(f"{node.base_url}/board")
    page.locator('.card[data-task="DEMO-1"]').click()
    page.wait_for_url("**/board/task/DEMO-1")
    page.locator("#timeline td", has_text="architecture").first.wait_for()
    assert page.locator("#task-title").text_content() == f"DEMO-1 {XSS_TITLE}"
    timeline = page.locator("#timeline tbody tr")
    assert timeline.nth(0).locator("td").nth(2).text_content() == "created"
    assert timeline.nth(1).locator("td").nth(2).text_content() == "analysis"
    assert page.locator("#jobs td", has_text="DEMO-1.analysis.1.work").count() == 1
    assert page.locator("#effects td", has_text="DEMO-1.pull.").count() >= 1
    assert page.locator("img, #task-view b:not(.facts b)").count() == 0
    if screenshots():
        page.screenshot(path=str(DOCS_IMG / "task.png"), full_page=True)
    page.goto(f"{node.base_url}/board/task/DEMO-2")
    page.locator("#description").wait_for()
    wait_until(lambda: "<script>" in (page.locator("#description").text_content() or ""))
    assert page.errors == []
