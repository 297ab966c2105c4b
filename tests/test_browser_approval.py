"""The approval as a person gives it: the Prefect UI in headless Chromium, the form filled and submitted."""

import shutil
from pathlib import Path

import pytest

from tests.harness import RELEASE, applied

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing; `make test` installs it (apt-get install chromium).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def field(page, dialog, label: str):
    # The v1 UI's labels have broken `for` ids: find the property block by its label text instead.
    return dialog.locator(".schema-form-property").filter(has=page.get_by_text(label, exact=True))


def test_approver_fills_the_form_in_the_prefect_ui_and_production_is_migrated(fresh_databases, browser, output_dir):
    from tests.harness import PromotionInBackground

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # The API is locked: the UI asks for the stack's credential once (`dbpromote stack status --show-secrets`); a
    # run's page opened before logging in shows "404" (its data answered 401), the runs list sends one to log in.
    page.goto(f"{fresh_databases.prefect_ui_url}/runs")
    page.get_by_placeholder("admin:pass").fill(fresh_databases.api_auth_string)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("button", name="Login").wait_for(state="detached")
    page.goto(f"{fresh_databases.prefect_ui_url}/runs/flow-run/{run.id}")
    page.get_by_role("button", name="Resume", exact=True).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Approve promoting tenant-backend to production").wait_for()
    assert dialog.get_by_text("core.0007_remove_invoice_legacy_reference").first.is_visible()
    page.screenshot(path=output_dir / "paused-run.png", full_page=True)

    # The v1 select opens from the keyboard (a headless click toggles it open and shut at once).
    field(page, dialog, "Decision").locator("button.p-select-button__control").press("ArrowDown")
    page.get_by_role("option", name="approve", exact=True).click()
    field(page, dialog, "Approver").get_by_role("textbox").fill("erin")
    field(page, dialog, "Comment (Optional)").get_by_role("textbox").fill("approved in the UI")
    field(page, dialog, "Acknowledge Risky Operations").get_by_role("switch").click()
    dialog.screenshot(path=output_dir / "approval-form.png")
    dialog.get_by_role("button", name="Submit").click()

    reports = promotion.finish()
    assert promotion.error is None, promotion.error
    assert applied(fresh_databases, "production") == ["core.0001_initial", *RELEASE]
    assert reports[1].target == "production"
    assert (output_dir / "paused-run.png").stat().st_size > 10_000
