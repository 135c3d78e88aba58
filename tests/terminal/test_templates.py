"""Template requests are byte for byte what the full terminal sends for the same values, decode with the
reference codec and carry the terminal's MAC; their answers are checked as the full path checks them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from typing import Any

import iso8583
import pydukpt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psec.mac import generate_retail_mac

from processor.iso8583 import SPEC, decode, response_mti
from processor.iso8583.mac import signed_parts
from terminal_sim.pos import CardData, PosTerminal
from terminal_sim.load import LoadResult, parse_expect, run_load
from terminal_sim.templates import KIND_SHAPE, TEMPLATE_KINDS, RequestTemplates

CARDS = [
    CardData(pan="4761739001010010", expiry="3012", track2="4761739001010010=30121011234567890000", cvv2="123"),
    CardData(pan="4761739001010028", expiry="2911", track2="4761739001010028=29111019876543210000", cvv2="456"),
    CardData(pan="476173900101003", expiry="2805", track2="476173900101003=28051011111111110000", cvv2="789"),
]


def _terminal() -> PosTerminal:
    return PosTerminal("T0000001", "M00000000000001", ipek="6AC292FAA1315B4D858AB3A3D7D5933A",
                       initial_ksn="FFFF9876543210E00000", chip_capable=False)


@pytest.mark.parametrize("kind", sorted(TEMPLATE_KINDS))
def test_a_template_request_is_the_full_paths_bytes(kind):
    terminal = _terminal()
    templates = RequestTemplates()
    for round_ in range(3):
        for card in CARDS:
            amount = 100 + 37 * round_
            reference = copy.deepcopy(terminal)
            payload, kept, ksn = templates.build(terminal, kind, card, amount)
            sent = decode(payload)
            # As Workload.next builds each kind: a keyed request carries the card's CVV2.
            extra = {"cvv2": card.cvv2} if kind == "manual" else {}
            fields = reference.card_request(card, amount if kind != "balance" else 0, **KIND_SHAPE[kind], **extra)
            for de in ("7", "11", "12", "13", "37"):
                fields[de] = sent[de]
            fields["53"] = ksn
            expected, _ = reference.sign(fields)
            assert payload == expected
            assert signed_parts(payload, sent) is not None
            assert kept["11"] == sent["11"] and kept["4"] == sent["4"] and kept["t"] == sent["t"]


def test_each_request_moves_the_stan_and_the_dukpt_counter():
    terminal = _terminal()
    templates = RequestTemplates()
    seen = set()
    for _ in range(20):
        payload, kept, ksn = templates.build(terminal, "purchase", CARDS[0], 500)
        fields = decode(payload)
        seen.add((fields["11"], fields["53"]))
        assert fields["53"] == ksn and terminal.owns(ksn)
    assert len(seen) == 20


# ---------------------------------------------------------------- against the references, and a wrong engine


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(sorted(TEMPLATE_KINDS)), card=st.sampled_from(CARDS), amount=st.integers(1, 10**9),
       counter=st.integers(0, 2**20 - 2))
def test_template_requests_decode_with_pyiso8583_and_carry_pydukpts_mac(kind, card, amount, counter):
    terminal = _terminal()
    terminal.dukpt_counter = counter
    prepared = RequestTemplates().prepare(terminal, kind, card, amount)
    assert int.from_bytes(prepared.framed[:2], "big") == len(prepared.payload)
    fields, _ = iso8583.decode(prepared.payload, SPEC)  # the reference codec, not ours
    assert fields["t"] == ("0100" if kind == "preauth" else "0200")
    assert fields["4"] == f"{0 if kind == 'balance' else amount:012d}" and fields["11"] == prepared.stan.decode()
    assert fields["37"] == prepared.rrn.decode() and fields["37"].endswith(fields["11"])
    assert (fields.get("35") or fields["2"]).startswith(card.pan)
    ksn = bytes.fromhex(fields["53"])
    assert ksn[:-3] == bytes.fromhex(terminal.initial_ksn)[:-3] and int.from_bytes(ksn, "big") & 0x1FFFFF == terminal.dukpt_counter
    key = pydukpt.mac_request_key(pydukpt.derive_key(bytes.fromhex(terminal.ipek), ksn))
    assert prepared.payload[-8:] == generate_retail_mac(key[:8], key[8:], prepared.payload[:-8], padding=1)
    assert fields["64"] == prepared.payload[-8:].hex().upper()


class WrongEngine:
    """An engine double over TCP that answers every request as told: a response code, and a MAC (right or
    wrong), an RRN (echoed or not), or no answer at all. Answers are built with pyiso8583 and pydukpt."""

    def __init__(self, code: str = "00", *, bad_mac: bool = False, other_rrn: bool = False, silent: bool = False) -> None:
        self.code, self.bad_mac, self.other_rrn, self.silent = code, bad_mac, other_rrn, silent
        self.requests = 0
        self.handlers: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        terminal = _terminal()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                raw = await reader.readexactly(int.from_bytes(await reader.readexactly(2), "big"))
                request, _ = iso8583.decode(raw, SPEC)
                self.requests += 1
                if self.silent:
                    continue
                answer = {k: request[k] for k in ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49") if k in request}
                answer.update({"t": response_mti(request["t"]), "39": self.code, "64": "00" * 8})
                if self.other_rrn:
                    answer["37"] = "999999999999"
                encoded, _ = iso8583.encode(answer, SPEC)
                ksn = bytes.fromhex(request["53"])
                key = pydukpt.mac_response_key(pydukpt.derive_key(bytes.fromhex(terminal.ipek), ksn))
                mac = generate_retail_mac(key[:8], key[8:], bytes(encoded[:-8]), padding=1)
                if self.bad_mac:
                    mac = bytes(b ^ 1 for b in mac)
                payload = bytes(encoded[:-8]) + mac
                writer.write(len(payload).to_bytes(2, "big") + payload)
        writer.close()


async def _run(engine: WrongEngine, terminal: PosTerminal | None = None, **options: Any) -> LoadResult:
    server = await asyncio.start_server(engine.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await run_load("127.0.0.1", port, [terminal or _terminal()], CARDS, connections=2, seconds=0.4,
                              mix={"purchase": 1}, templates=True, **options)
    finally:
        server.close()
        # The load closed its connections: each handler sees the end of its stream and returns.
        await asyncio.wait_for(asyncio.gather(*engine.handlers), timeout=5)


async def test_template_answers_with_a_wrong_code_are_unexpected_and_fail_the_run():
    terminal = _terminal()
    result = await _run(WrongEngine("05"), terminal)
    assert terminal.batch.items == {}
    assert result.count > 5 and result.by_kind["purchase"] == {"05": result.count}
    assert result.unexpected == result.count and result.unauthentic == 0
    assert any("not expected for their kind: purchase 05=" in failure for failure in result.failures())


async def test_expect_fails_a_run_whose_template_answers_are_otherwise_fine():
    terminal = _terminal()
    fine = await _run(WrongEngine("00"), terminal)
    assert fine.failures() == [] and len(terminal.batch.items) == fine.count > 5  # each approval journaled
    result = await _run(WrongEngine("51"), expected=parse_expect(["purchase=00"]))
    assert result.unexpected == result.count > 5 and result.failures()


@pytest.mark.parametrize("wrong", [{"bad_mac": True}, {"other_rrn": True}])
async def test_an_answer_that_is_not_the_engines_is_not_counted_as_an_approval(wrong):
    terminal = _terminal()
    result = await _run(WrongEngine("00", **wrong), terminal)
    assert result.count == 0 and result.unauthentic > 5
    assert any("not the engine's" in failure for failure in result.failures())
    assert terminal.batch.items == {}  # nothing the terminal would settle


async def test_one_watchdog_bounds_every_template_wait():
    engine = WrongEngine(silent=True)
    started = time.monotonic()
    result = await _run(engine, timeout_s=0.3)
    # Each session's request times out, then its reversal does: the run ends within a few timeouts.
    assert time.monotonic() - started < 3.0
    assert result.timeouts == 2 and result.count == 0 and engine.requests == 4


async def test_an_open_loop_of_template_requests_keeps_its_rate():
    result = await _run(WrongEngine("00"), rate=40.0)
    # 0.4 s at 40 requests a second: about 16, whatever the engine could take.
    assert 8 <= result.count <= 20 and result.failures() == []
