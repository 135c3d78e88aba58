"""The HTML report in a real headless browser (Debian's chromium through Playwright): it renders, and its
figures are the JSON report's."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from settlement_helpers import all_captured_at

from processor.settlement.config import load_config
from processor.settlement.day import settle_day
from processor.settlement.report import build_report, write_html

CHROMIUM = "/usr/bin/chromium"
DAY = dt.date(2026, 10, 25)  # 25 hours in Europe/Paris
AT = dt.datetime(2026, 10, 25, 9, 30, tzinfo=dt.UTC)


def _browser_or_skip() -> None:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing; `scripts/setup test` installs it", pytrace=False)
        pytest.skip("chromium is missing (scripts/setup test installs it)")


@pytest.mark.parametrize("issuer", ["sqlite"], indirect=True)
async def test_html_report_renders_and_its_numbers_match_the_json(issuer: Any, tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright

    shop, market = issuer.terminals["shop"], issuer.terminals["market"]
    for card, amount in (("ada", 12_34), ("grace", 250_00), ("ivan", 9_99)):
        assert (await issuer.send(shop.card_request(issuer.cards[card], amount)))["39"] == "00"
    assert (await issuer.send(market.card_request(issuer.cards["ivan"], 15_00)))["39"] == "00"
    assert (await issuer.send(shop.card_request(issuer.cards["bob"], 900_00)))["39"] == "51"
    assert (await issuer.send(shop.card_request(issuer.cards["carol"], 1_00)))["39"] == "62"
    store = issuer.running.store
    await all_captured_at(store, AT)
    await settle_day(store, DAY, await load_config(store), out_dir=tmp_path)
    report = await build_report(store, DAY)
    page_path = Path(write_html(report, tmp_path / "report.html"))

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(page_path.as_uri())
            assert await page.title() == f"Settlement {DAY}"
            fields = await page.eval_on_selector_all(
                "[data-field]", "els => els.map(e => [e.dataset.field, e.dataset.value ?? e.textContent])"
            )
            charts = await page.eval_on_selector_all("svg", "els => els.map(e => e.getBoundingClientRect().height)")
            await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            await browser.close()
    seen = dict(fields)
    stats = report["statistics"]
    assert seen["business_date"] == str(DAY)
    assert int(seen["statistics.requests"]) == stats["requests"] == 6
    assert int(seen["statistics.approved"]) == stats["approved"] == 4
    assert float(seen["statistics.approval_rate"]) == stats["approval_rate"]
    assert int(seen["totals.EUR.net_minor"]) == report["totals"]["EUR"]["net_minor"] == 287_33
    for i, merchant in enumerate(report["merchants"]):
        for name in ("gross_minor", "fee_minor", "interchange_minor", "net_minor", "purchases_minor"):
            assert int(seen[f"merchants[{i}].{name}"]) == merchant[name]
    bars = [int(v) for k, v in fields if k.startswith("statistics.by_hour.requests[")]
    assert bars == [h["requests"] for h in stats["by_hour"]] and sum(bars) == 6
    declines = [int(v) for k, v in fields if k.startswith("statistics.top_declines.count[")]
    assert sorted(declines) == [1, 1]
    assert len(charts) == 3 and all(h > 100 for h in charts)
