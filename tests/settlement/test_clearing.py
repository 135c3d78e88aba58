"""Off-us: a simulated acquiring network authorizes our cards, then its clearing file is ingested and settled."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from processor import issuing, ledger
from processor.errors import InvalidRequest
from processor.iso8583.clearing import ClearingFileError, ClearingWriter, scan_clearing_file
from processor.ledger.models import journal_entries
from processor.settlement.config import load_config
from processor.settlement.day import settle_day
from processor.settlement.ingest import ingest_file
from processor.settlement.report import build_report, reconcile
from settlement_helpers import euronet
from terminal_sim.network import AcquiringNetwork

DAY = dt.date(2026, 3, 29)
NOON = dt.datetime(2026, 3, 29, 10, 0, tzinfo=dt.UTC)


async def entries(store: Any) -> int:
    return await store.run_read(lambda conn: conn.execute(select(func.count()).select_from(journal_entries)).scalar_one())


async def test_the_networks_day_is_matched_posted_and_settled_with_its_exceptions(issuer: Any, tmp_path: Path) -> None:
    store, hsm = issuer.running.store, issuer.running.hsm
    network = await euronet(issuer, merchants=3)
    cards = [issuer.cards[n] for n in ("ada", "grace", "ivan")]
    day = await network.run(issuer.conn, cards, 12)
    assert len(day.approved) == 12, day.codes
    assert {r["42"] for r, _, _ in day.approved} == {"BOOKSHOP0000001", "CAFE00000000001", "HOTEL0000000009"}
    held = (await issuer.account("ada")).held_minor
    assert held > 0

    # One of ivan's authorizations expires before it is presented; grace's card is closed afterwards.
    late = next(i for i, (_, _, c) in enumerate(day.approved) if c.pan == issuer.cards["ivan"].pan)
    from sqlalchemy import update

    from processor.ledger.models import auths, holds

    late_rrn = day.approved[late][0]["37"]

    def expire_one(conn: Any) -> None:
        hold_id = conn.execute(select(auths.c.hold_id).where(auths.c.rrn == late_rrn)).scalar_one()
        conn.execute(update(holds).where(holds.c.id == hold_id).values(expires_at=NOON - dt.timedelta(days=1)))

    await store.run_write(expire_one)
    await ledger.holds.expire(store, NOON)
    await issuing.cards.set_status(store, issuer.cards["grace"].card_id, "closed")

    path = tmp_path / "euronet.ipm"
    written = network.write_clearing_file(day, path, file_id="EURONET-20260329-01", business_date=DAY, scenarios=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert written["records"] == 12 + 1 + 2  # a duplicate, an unauthorized sale and a refund
    config = await load_config(store)

    result = await ingest_file(store, hsm, path, config, now=NOON)

    assert result["business_date"] == "2026-03-29" and result["status"] == "complete"
    grace_count = sum(1 for _, _, c in day.approved if c.pan == issuer.cards["grace"].pan)
    assert result["exceptions"] == {
        "amount_over_tolerance": 1, "duplicate_presentment": 1, "no_authorization": 1, "late_presentment": 1,
        "closed_card": grace_count,
    }
    assert result["by_status"]["duplicate"] == 1 and result["posted"] == 14
    assert (await issuer.account("ada")).held_minor == 0  # every hold of ada's was captured
    assert await ledger.invariants.check(store) == []

    before = await entries(store)
    again = await ingest_file(store, hsm, path, config, now=NOON)
    assert again["already_ingested"] and await entries(store) == before
    assert {k: v for k, v in again.items() if k != "already_ingested"} == {k: v for k, v in result.items() if k != "already_ingested"}

    summary = await settle_day(store, DAY, config, out_dir=tmp_path / "out")
    (position,) = summary["networks"]
    assert position["party"] == "1" or position["party"] == "400001"
    assert position["purchases_count"] == 13 and position["refunds_count"] == 1
    assert position["gross_minor"] == result["posted_minor"] - 2 * 5_00
    assert position["net_minor"] == position["gross_minor"] - position["interchange_minor"] > 0
    assert await ledger.invariants.check(store) == []
    exceptions = (await reconcile(store, DAY))["by_kind"]
    assert exceptions["no_authorization"] == 1 and exceptions["late_presentment"] == 1
    report = await build_report(store, DAY)
    assert report["networks"][0]["name"] == "EuroNet"
    assert {p["status"] for p in report["presentments"]} >= {"matched", "forced", "duplicate"}


async def test_a_second_file_presenting_the_same_authorizations_is_all_duplicates(issuer: Any, tmp_path: Path) -> None:
    store, hsm = issuer.running.store, issuer.running.hsm
    network = await euronet(issuer, merchants=2)
    day = await network.run(issuer.conn, [issuer.cards["ada"]], 3)
    config = await load_config(store)
    first = await ingest_file(store, hsm, _file(network, day, tmp_path / "a.ipm", "F1"), config, now=NOON)
    assert first["by_status"] == {"matched": 3}
    second = await ingest_file(store, hsm, _file(network, day, tmp_path / "b.ipm", "F2"), config, now=NOON)
    assert second["by_status"] == {"duplicate": 3} and second["posted"] == 0


def _file(network: AcquiringNetwork, day: Any, path: Path, file_id: str) -> Path:
    network.write_clearing_file(day, path, file_id=file_id, business_date=DAY)
    return path


@pytest.mark.parametrize("issuer", ["sqlite"], indirect=True)
async def test_damaged_files_and_unknown_networks_are_refused_whole(issuer: Any, tmp_path: Path) -> None:
    store, hsm = issuer.running.store, issuer.running.hsm
    config = await load_config(store)
    network = await euronet(issuer)
    day = await network.run(issuer.conn, [issuer.cards["ada"]], 2)
    path = _file(network, day, tmp_path / "f.ipm", "F1")
    with ClearingWriter(tmp_path / "stranger.ipm", file_id="S1", network="400002", business_date=DAY) as w:
        w.add(network.presentment(*day.approved[0][:2]))
    with pytest.raises(InvalidRequest, match="network 400002 is not registered"):
        await ingest_file(store, hsm, tmp_path / "stranger.ipm", config)
    truncated = tmp_path / "truncated.ipm"
    truncated.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(InvalidRequest, match="truncated"):
        await ingest_file(store, hsm, truncated, config)
    with ClearingWriter(tmp_path / "short.ipm", file_id="F9", network="400001", business_date=DAY) as w:
        w.add(network.presentment(*day.approved[0][:2]))
        w.control_sum += 1  # a trailer that does not add up
    with pytest.raises(ClearingFileError, match="trailer says"):
        scan_clearing_file(tmp_path / "short.ipm")
    other = tmp_path / "other.ipm"
    network.write_clearing_file(day, other, file_id="F1", business_date=DAY, scenarios=True)
    await ingest_file(store, hsm, path, config)
    with pytest.raises(InvalidRequest, match="ingested before with other content"):
        await ingest_file(store, hsm, other, config)
    assert await ledger.invariants.check(store) == []
