"""The terminal's journal and the issuer's batch rules agree, and terminals follow the chip-first rule."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from processor.iso8583 import BatchTotals
from processor.ledger.terminal_batches import net_totals
from terminal_sim.batch_close import reconciliation_request
from terminal_sim.journal import TerminalBatch
from terminal_sim.load import Workload
from terminal_sim.pos import CardData, InsertChip, PosTerminal

CHIP = CardData(pan="4761739001010010", expiry="3012", track2="4761739001010010=30122010000000000", cvv2="123",
                chip_track2="4761739001010010=30122010000000999", pin="1234")
STRIPE = CardData(pan="4761739001010028", expiry="3012", track2="4761739001010028=30121010000000000", cvv2="456")

# One step of a day: a sale, a refund, a declined sale, a partial approval, or a reversal of an earlier
# step (in full, or down to a remaining amount).
amounts = st.integers(min_value=1, max_value=500_00)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("sale"), amounts),
        st.tuples(st.just("refund"), amounts),
        st.tuples(st.just("declined"), amounts),
        st.tuples(st.just("partial"), amounts),
        st.tuples(st.just("reverse"), st.integers(min_value=0, max_value=40), st.one_of(st.none(), amounts)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
@example([("sale", 10_00), ("reverse", 0, 5_00), ("reverse", 0, 3_00)])  # a second reversal changes nothing
@example([("sale", 10_00), ("reverse", 0, None), ("reverse", 0, 4_00)])
def test_terminal_journal_and_issuer_totals_agree(day: list[tuple[Any, ...]]) -> None:
    terminal = PosTerminal("T0000001", "MERCHANT0000001", chip_capable=False)
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    requests: list[dict[str, Any]] = []
    rows: list[SimpleNamespace] = []  # what the issuer's store records for the same answers
    for step in day:
        if step[0] == "reverse":
            if not requests:
                continue
            original = requests[step[1] % len(requests)]
            remaining = step[2]
            reversal = terminal.reversal(original, remaining_minor=remaining, now=now)
            original_row = rows[requests.index(original)]
            undo = 0
            if original_row.rc in ("00", "10") and not original_row.reversed:
                undo = max(0, original_row.approved_minor - (remaining or 0))
                original_row.reversed = True
            rows.append(SimpleNamespace(id=len(rows) + 1, op="reverse", rc="00", approved_minor=undo,
                                        original_auth_id=original_row.id, reversed=False))
            requests.append(reversal)
            terminal.batch.record(reversal, {"39": "00"})
            continue
        kind, amount = step
        code = "200000" if kind == "refund" else "000000"
        request = terminal.card_request(STRIPE, amount, processing_code=code, entry="magstripe", now=now)
        rc = {"declined": "51", "partial": "10"}.get(kind, "00")
        approved = 0 if rc == "51" else (amount + 1) // 2 if rc == "10" else amount
        answer = {"39": rc, "4": f"{approved:012d}"}
        rows.append(SimpleNamespace(id=len(rows) + 1, op="credit" if kind == "refund" else "debit", rc=rc,
                                    approved_minor=approved, original_auth_id=None, reversed=False))
        requests.append(request)
        terminal.batch.record(request, answer)
    counted = [r for r in rows if r.rc in ("00", "10")]
    host = net_totals(counted)
    assert terminal.batch.totals() == host
    message = reconciliation_request(terminal, now)
    assert message["t"] == "0500" and BatchTotals.from_fields(message) == host


def test_the_batch_survives_a_restart_of_the_terminal() -> None:
    terminal = PosTerminal("T0000001", "MERCHANT0000001", chip_capable=False)
    sale = terminal.card_request(CHIP, 12_00, entry="magstripe")
    terminal.batch.record(sale, {"39": "00", "4": "000000001200"})
    terminal.batch.number = 41
    restored = TerminalBatch.from_state(terminal.batch.as_state())
    assert restored.totals() == BatchTotals(0, 0, 1, 12_00) and restored.number == 41
    restored.record(terminal.reversal(sale), {"39": "00"})
    assert restored.totals() == BatchTotals()


def test_a_chip_terminal_asks_for_the_chip() -> None:
    chip_terminal = PosTerminal("T0000001", "MERCHANT0000001")
    assert CHIP.has_chip and not STRIPE.has_chip
    with pytest.raises(InsertChip):
        chip_terminal.card_request(CHIP, 1_00, entry="magstripe")
    assert chip_terminal.card_request(CHIP, 1_00, entry="fallback")["22"] == "801"
    assert chip_terminal.card_request(STRIPE, 1_00, entry="magstripe")["22"] == "901"


def test_load_swipes_only_what_a_terminal_may_swipe() -> None:
    chip_terminal = PosTerminal("T0000001", "MERCHANT0000001", ipek="00" * 16, initial_ksn="FFFF9876543210E00000")
    workload = Workload([CHIP, STRIPE], {"purchase": 1, "refund": 1, "preauth": 1, "pin": 1}, seed=3)
    for _ in range(50):
        kind, request = workload.next(chip_terminal)
        pan = (request.get("2") or request["35"]).split("=")[0]
        if kind == "pin":
            assert request["22"].startswith("05") and pan == CHIP.pan
        else:
            assert request["22"].startswith("90") and pan == STRIPE.pan
    only_chips = Workload([CHIP], {"purchase": 1})
    with pytest.raises(ValueError, match="magstripe-only cards or a terminal without a chip reader"):
        only_chips.next(chip_terminal)
    stripe_reader = PosTerminal("T0000002", "MERCHANT0000001", chip_capable=False)
    assert only_chips.next(stripe_reader)[1]["35"].startswith(CHIP.pan)
