"""`terminal-sim load`: many terminals, a mix of transaction kinds, throughput and latency percentiles.

Each connection is a terminal session driving requests one after another (closed loop), or at a fixed
overall rate (open loop) when a rate is given. Terminals that share an id share one STAN sequence, so
no two requests ever collide on the engine's idempotency key by accident.

The chip kinds read a personalized virtual card in process for every transaction: "chip" is a contact
card with online PIN and the second GENERATE AC after the issuer's answer, "contactless" a qVSDC tap
(online PIN above the contactless limit). A card is in one terminal at a time, so its ATCs reach the
engine in order.

The swiped kinds follow the chip-first rule: a terminal with a chip reader swipes only cards without a
chip. Every terminal keeps its batch as it goes, and can close it against the engine's at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import time
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from processor.iso8583 import rc
from terminal_sim.batch_close import BatchReport, close_batch
from terminal_sim.chip_pos import ChipCard, ReversalFailed, chip_transaction
from terminal_sim.cpu import CpuFigures, DecodeUnit, PostgresCpu, ProcessCpu
from terminal_sim.emv.kernel import CardError
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection, outgoing
from terminal_sim.load_report import Latencies, LoadProgress, distribution_json, histogram_json, nearest_rank
from terminal_sim.nfc import DEFAULT_CONTACTLESS_LIMIT_MINOR
from terminal_sim.pos import CardData, PosTerminal
from terminal_sim.templates import TEMPLATE_KINDS, AnswerLayouts, Prepared, RequestTemplates

DEFAULT_MIX = {"purchase": 60, "pin": 15, "manual": 10, "preauth": 5, "balance": 5, "refund": 5}
DEFAULT_CHIP_MIX = {"purchase": 25, "pin": 10, "chip": 20, "contactless": 15, "manual": 5, "preauth": 5, "balance": 5, "refund": 5}
CHIP_KINDS = ("chip", "contactless", "wallet")
# Kinds that swipe the stripe: at a terminal with a chip reader only a card without a chip may be swiped.
SWIPE_KINDS = ("purchase", "preauth", "balance", "refund")
KINDS = ("purchase", "pin", "manual", "preauth", "balance", "refund", *CHIP_KINDS)
# What the issuer may rightly answer to each kind the load sends, with valid cards, PINs and cryptograms:
# an approval, or 51 once an account runs dry (61 for a refund past its merchant's limit). Anything else (14 unknown card, 55 wrong PIN, 82 cryptogram,
# 96 system error...) means the run is not measuring what it claims, and fails it.
FUNDS_DEPENDENT = frozenset({rc.APPROVED, rc.INSUFFICIENT_FUNDS})
EXPECTED_CODES: dict[str, frozenset[str]] = {
    **{kind: FUNDS_DEPENDENT for kind in ("purchase", "pin", "manual", "preauth", *CHIP_KINDS)},
    "completion": frozenset({rc.APPROVED}),
    "balance": frozenset({rc.APPROVED}),
    # The load's refunds name no purchase: the issuer bounds those per merchant and day (61 past it).
    "refund": frozenset({rc.APPROVED, rc.EXCEEDS_AMOUNT_LIMIT}),
}


def parse_mix(text: str | None) -> dict[str, int]:
    """'purchase=70,pin=30' -> weights; unknown kinds are refused by name."""
    if not text:
        return dict(DEFAULT_MIX)
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown transaction kind {name!r}; known: {', '.join(KINDS)}")
        if not weight.strip().isdigit():
            raise ValueError(f"weight of {name!r} must be a whole number")
        mix[name] = int(weight)
    if not any(mix.values()):
        raise ValueError("the mix has no weight")
    return mix


def parse_expect(entries: list[str] | None) -> dict[str, frozenset[str]]:
    """EXPECTED_CODES with each 'kind=00,51' entry replacing its kind's codes; bad kinds and codes are refused."""
    expected = dict(EXPECTED_CODES)
    for entry in entries or []:
        name, _, codes = entry.partition("=")
        name = name.strip()
        if name not in expected:
            raise ValueError(f"--expect: unknown transaction kind {name!r}; known: {', '.join(expected)}")
        parsed = frozenset(c.strip().upper() for c in codes.split(",") if c.strip())
        if not parsed or any(len(c) != 2 or not c.isalnum() for c in parsed):
            raise ValueError(f"--expect {name}: give two-character response codes separated by commas, e.g. {name}=00,51")
        expected[name] = parsed
    return expected


@dataclass
class LoadResult:
    """What one run measured: answers by kind and code, latencies, and what fails the run."""

    seconds: float
    connections: int
    expected: dict[str, frozenset[str]] = field(default_factory=lambda: dict(EXPECTED_CODES))
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    # Each answer's latency in microseconds, by kind: an append per answer; the HdrHistograms and their
    # percentiles are made once, at the end (`latencies_by_kind`).
    latencies_us: dict[str, array[int]] = field(default_factory=dict)
    timeouts: int = 0
    errors: int = 0
    reversals: int = 0  # approved by the issuer, then refused by the card, and reversed
    unauthentic: int = 0  # answers to template requests that were not the engine's (MAC, RRN, MTI)
    batches: list[BatchReport] = field(default_factory=list)  # the terminals' closes at the end, when asked
    cpu: CpuFigures | None = None  # what the engine and the generator spent per answer, when measured
    unexpected: int = 0
    # How many latencies of each kind the live line has seen: the last second's are those after.
    _progress_marks: dict[str, int] = field(default_factory=dict)
    _histograms: tuple[int, dict[str, Latencies]] = field(default_factory=lambda: (-1, {}))

    def record(self, kind: str, code: str, latency_ms: float) -> None:
        self.record_us(kind, code, int(latency_ms * 1000))

    def record_us(self, kind: str, code: str, latency_us: int) -> None:
        # The load generator shares the machine with what it measures: counting and an append per answer.
        kind_codes = self.by_kind.get(kind)
        if kind_codes is None:
            kind_codes = self.by_kind[kind] = Counter()
            self.latencies_us[kind] = array("q")
        kind_codes[code] += 1
        self.latencies_us[kind].append(latency_us)
        if code not in self.expected.get(kind, ()):
            self.unexpected += 1

    @property
    def codes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for codes in self.by_kind.values():
            total.update(codes)
        return total

    @property
    def count(self) -> int:
        return sum(codes.total() for codes in self.by_kind.values())

    @property
    def latencies_by_kind(self) -> dict[str, Latencies]:
        """An HdrHistogram of each kind's latencies (made when asked, then kept until the next answer)."""
        count = self.count
        if self._histograms[0] != count:
            histograms = {}
            for kind, values in self.latencies_us.items():
                histograms[kind] = Latencies()
                histograms[kind].record_us(values)
            self._histograms = (count, histograms)
        return self._histograms[1]

    @property
    def latencies(self) -> Latencies:
        """Every answer's latency: the kinds' histograms added up."""
        total = Latencies()
        for kind_latencies in self.latencies_by_kind.values():
            total.add(kind_latencies)
        return total

    def declined_codes(self) -> Counter[str]:
        return Counter({code: n for code, n in self.codes.items() if code not in rc.APPROVALS})

    def progress(self, elapsed_s: float) -> LoadProgress:
        """The live line's figures; the per-second ones start again from here."""
        declined = self.declined_codes()
        last_s_us: list[int] = []
        for kind, values in self.latencies_us.items():
            last_s_us.extend(values[self._progress_marks.get(kind, 0) :])
            self._progress_marks[kind] = len(values)
        last_s_us.sort()
        answered = self.count
        return LoadProgress(
            elapsed_s=elapsed_s,
            answered=answered,
            answered_last_s=len(last_s_us),
            approved=answered - sum(declined.values()),
            declined=declined,
            unexpected=self.unexpected,
            timeouts=self.timeouts,
            errors=self.errors,
            p99_last_s_ms=nearest_rank(last_s_us, 99) / 1000,
        )

    def failures(self) -> list[str]:
        """Why the run does not show what its mix should: one sentence each; empty when it does."""
        failures = []
        if not self.count:
            failures.append("no request was answered")
        if self.unexpected:
            detail = "; ".join(
                f"{kind} {', '.join(f'{code}={n}' for code, n in sorted(wrong.items()))} (expected {'/'.join(sorted(self.expected.get(kind, ())))})"
                for kind, wrong in self._unexpected_by_kind().items()
            )
            failures.append(f"{self.unexpected} answers not expected for their kind: {detail}")
        if self.timeouts:
            failures.append(f"{self.timeouts} requests unanswered in time (reversed)")
        if self.errors:
            failures.append(f"{self.errors} errors (connection lost, or a card that refused to finish)")
        if self.unauthentic:
            failures.append(f"{self.unauthentic} answers not the engine's (MAC, RRN or message type wrong)")
        unbalanced = [b for b in self.batches if not b.in_balance]
        if unbalanced:
            failures.append(f"{len(unbalanced)} of {len(self.batches)} terminal batches not closed in balance")
        return failures

    def _unexpected_by_kind(self) -> dict[str, Counter[str]]:
        out = {}
        for kind, codes in sorted(self.by_kind.items()):
            wrong = Counter({c: n for c, n in codes.items() if c not in self.expected.get(kind, frozenset())})
            if wrong:
                out[kind] = wrong
        return out

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        unexpected = self._unexpected_by_kind()
        kinds = {}
        for kind, codes in sorted(self.by_kind.items()):
            kl = self.latencies_by_kind[kind]
            kinds[kind] = {
                "count": sum(codes.values()),
                "codes": dict(sorted(codes.items())),
                "expected": sorted(self.expected.get(kind, ())),
                "unexpected": sum(unexpected.get(kind, Counter()).values()),
                "p50_ms": round(kl.percentile_ms(50), 2),
                "p99_ms": round(kl.percentile_ms(99), 2),
                "p99_9_ms": round(kl.percentile_ms(99.9), 2),
            }
        declined = self.declined_codes()
        failures = self.failures()
        return {
            "tps": round(self.count / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(lat.percentile_ms(50), 2),
            "p95_ms": round(lat.percentile_ms(95), 2),
            "p99_ms": round(lat.percentile_ms(99), 2),
            "p99_9_ms": round(lat.percentile_ms(99.9), 2),
            "max_ms": round(lat.max_ms, 2),
            "mean_ms": round(lat.mean_ms, 2),
            "count": self.count,
            "seconds": round(self.seconds, 2),
            "connections": self.connections,
            "codes": dict(sorted(self.codes.items())),
            "approved": self.count - sum(declined.values()),
            "declined": sum(declined.values()),
            "declined_codes": dict(sorted(declined.items())),
            "unexpected": self.unexpected,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "reversals": self.reversals,
            "unauthentic": self.unauthentic,
            "by_kind": kinds,
            "latency_distribution_ms": distribution_json(lat),
            "latency_histogram_ms": histogram_json(lat),
            "latency_hdr": lat.encoded(),
            **({"batches": self.batches_summary()} if self.batches else {}),
            **({"cpu": self.cpu.as_json()} if self.cpu is not None else {}),
            "ok": not failures,
            "failures": failures,
        }

    def batches_summary(self) -> dict[str, Any]:
        """How the terminals' end-of-run batch closes went; the out-of-balance ones in full."""
        return {
            "closed": sum(1 for b in self.batches if b.rc in ("00", "95")),
            "in_balance": sum(1 for b in self.batches if b.in_balance),
            "debits_count": sum(b.terminal.debits_count for b in self.batches),
            "debits_minor": sum(b.terminal.debits_minor for b in self.batches),
            "credits_count": sum(b.terminal.credits_count for b in self.batches),
            "credits_minor": sum(b.terminal.credits_minor for b in self.batches),
            "close_max_ms": round(max((b.elapsed_ms for b in self.batches), default=0.0), 2),
            "not_in_balance": [b.as_json() for b in self.batches if not b.in_balance],
        }


class Workload:
    """Chooses the next transaction and builds its request; keeps pre-authorizations to complete later."""

    def __init__(
        self,
        cards: list[CardData],
        mix: dict[str, int],
        *,
        seed: int | None = None,
        chip_cards: list[ChipCard] | None = None,
    ) -> None:
        self.chip_cards = [c for c in chip_cards or [] if not c.is_wallet]
        self.wallet_cards = [c for c in chip_cards or [] if c.is_wallet]
        if not cards and not self.chip_cards and not self.wallet_cards:
            raise ValueError("no cards to load with")
        self.cards = cards
        self.stripe_cards = [c for c in cards if not c.has_chip]
        self.kinds = [k for k, w in mix.items() if w > 0 and (cards or k in CHIP_KINDS)]
        if not self.kinds:
            raise ValueError("no kind of the mix can run with these cards (the chip kinds need bureau records)")
        if not self.chip_cards and any(k in ("chip", "contactless") for k in self.kinds):
            raise ValueError("the chip and contactless kinds need cards with bureau records (--bureau-dir or --provision)")
        if not self.wallet_cards and "wallet" in self.kinds:
            raise ValueError("the wallet kind needs provisioned wallet tokens (--provision)")
        self.weights = [mix[k] for k in self.kinds]
        self.random = random.Random(seed)

    def choose_kind(self) -> str:
        return self.random.choices(self.kinds, self.weights)[0]

    def chip_card(self, kind: str = "chip") -> ChipCard:
        """A chip (or a phone, for the wallet kind) not in another terminal right now when there is one
        (else any: its lock orders the uses)."""
        pool = self.wallet_cards if kind == "wallet" else self.chip_cards
        for _ in range(4):
            card = self.random.choice(pool)
            if not card.lock.locked():
                return card
        return card

    def swipeable(self, terminal: PosTerminal) -> list[CardData]:
        """Cards this terminal may swipe: any without a chip reader, else only cards without a chip."""
        pool = self.stripe_cards if terminal.chip_capable else self.cards
        if not pool:
            raise ValueError(
                f"terminal {terminal.terminal_id} reads chips and every card has one: the swipe kinds "
                f"({', '.join(SWIPE_KINDS)}) need magstripe-only cards or a terminal without a chip reader"
            )
        return pool

    def amount(self) -> int:
        return self.random.randint(100, 2_000)

    def next(self, terminal: PosTerminal, kind: str | None = None) -> tuple[str, dict[str, Any]]:
        """The next magstripe/keyed request (the chip kinds run through chip_transaction instead)."""
        kind = kind or self.choose_kind()
        if kind in CHIP_KINDS:
            raise ValueError(f"kind {kind!r} is a chip transaction, not a single request")
        amount = self.amount()
        if kind == "pin":
            # A swipe with an online PIN: the stripe proves the card (CVV1), the PIN pad the cardholder.
            pin_cards = [c for c in self.swipeable(terminal) if c.pin is not None]
            if pin_cards and terminal.ipek is not None:
                return kind, terminal.card_request(self.random.choice(pin_cards), amount, entry="magstripe", with_pin=True)
            kind = "purchase"
        card = self.random.choice(self.swipeable(terminal) if kind in SWIPE_KINDS else self.cards)
        if kind == "purchase":
            return kind, terminal.card_request(card, amount, entry="magstripe")
        if kind == "manual":
            return kind, terminal.card_request(card, amount, entry="manual", cvv2=card.cvv2)
        if kind == "preauth":
            return kind, terminal.card_request(card, amount, mti="0100", entry="magstripe")
        if kind == "balance":
            return kind, terminal.card_request(card, 0, processing_code="310000", entry="magstripe")
        return kind, terminal.card_request(card, amount, processing_code="200000", entry="magstripe")


async def run_load(
    host: str,
    port: int,
    terminals: list[PosTerminal],
    cards: list[CardData],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
    mix: dict[str, int] | None = None,
    timeout_s: float = 5.0,
    progress: Callable[[LoadProgress], None] | None = None,
    seed: int | None = None,
    chip_cards: list[ChipCard] | None = None,
    contactless_limit_minor: int = DEFAULT_CONTACTLESS_LIMIT_MINOR,
    close_batches: bool = False,
    expected: dict[str, frozenset[str]] | None = None,
    mqtt: MqttTarget | None = None,
    engine_pids: list[int] | None = None,
    postgres_url: str | None = None,
    templates: bool = False,
) -> LoadResult:
    """Drive the engine for `seconds`; a request unanswered within `timeout_s` is reversed, as a terminal does.

    Over TCP (host, port) each of the `connections` sessions has a connection of its own. Over MQTT
    (`mqtt` given; host and port unused) each terminal has one broker connection, shared by its sessions.
    With `close_batches`, every terminal closes its batch (0500) at the end and the result says which
    were in balance with the engine's totals.

    With `templates`, the kinds sent as one request go out from prepared templates (terminal_sim.templates):
    the same bytes for far less of the generator's CPU. Over TCP each session then runs from its connection's
    reader (_TemplateSession): an answer starts the session's next request without a task switch.

    With `engine_pids` (processes on this machine) the result also says what CPU they spent per answer
    against the decode unit (terminal_sim.cpu), with `postgres_url` what the database's backends spent.
    """
    if not terminals:
        raise ValueError("no terminals to load with")
    workload = Workload(cards, mix or (DEFAULT_CHIP_MIX if chip_cards else DEFAULT_MIX), seed=seed, chip_cards=chip_cards)
    if workload.cards and any(k in SWIPE_KINDS for k in workload.kinds):
        for terminal in terminals:
            workload.swipeable(terminal)
    result = LoadResult(seconds=seconds, connections=connections, expected=expected or dict(EXPECTED_CODES))
    if mqtt is None:
        conns: list[Any] = [
            await TerminalConnection.connect(host, port, timeout_s=timeout_s) for _ in range(connections)
        ]
        by_terminal: dict[str, Any] = {}
    else:
        by_terminal = await mqtt.connect_all(terminals, timeout_s=timeout_s)
        conns = [by_terminal[terminals[i % len(terminals)].terminal_id] for i in range(connections)]
    # Every terminal MACs its requests and checks the engine's MACs, whichever connection carries them.
    for conn in conns:
        for terminal in terminals:
            conn.add_terminal(terminal)
    prepared = RequestTemplates() if templates else None
    layouts = AnswerLayouts()
    # What the run set up stays to its end: frozen, the collector does not walk it again and again while
    # the run allocates its short-lived requests.
    gc.collect()
    gc.freeze()
    meter: _CpuMeter | None = await _CpuMeter.begin(workload, terminals, conns[0], seconds, engine_pids, postgres_url)
    started = time.perf_counter()
    deadline = started + seconds
    tokens: asyncio.Queue[None] | None = asyncio.Queue(maxsize=max(1, connections * 4)) if rate and not (templates and mqtt is None) else None

    async def chip_one(conn: TerminalConnection, terminal: PosTerminal, kind: str) -> None:
        contactless = kind in ("contactless", "wallet")
        chip = workload.chip_card(kind)
        amount = workload.amount()
        # A phone verifies its holder itself (consumer-device CVM): a wallet tap never asks for the PIN.
        pin_needed = kind == "chip" or (kind == "contactless" and amount > contactless_limit_minor)
        async with chip.lock:
            card = chip.insert(contactless)
            t0 = time.perf_counter()
            try:
                outcome = await chip_transaction(
                    conn, terminal, card.process_apdu, amount, contactless=contactless,
                    pin=chip.pin if pin_needed else None, timeout_s=timeout_s,
                )
            except CardError:
                result.errors += 1
                return
            except ReversalFailed:
                result.timeouts += 1
                raise ConnectionError("the engine acknowledged neither a request nor its reversal") from None
            finally:
                chip.remove(card)
        if outcome.rc is None:
            result.timeouts += 1
            return
        if outcome.reversed:
            result.reversals += 1
        result.record(kind, outcome.rc, (time.perf_counter() - t0) * 1000)

    async def one(conn: TerminalConnection, terminal: PosTerminal, kind: str | None = None) -> None:
        kind = kind or workload.choose_kind()
        if kind in CHIP_KINDS:
            await chip_one(conn, terminal, kind)
            return
        if prepared is not None and kind in TEMPLATE_KINDS and terminal.ipek is not None:
            await template_one(conn, terminal, kind)
            return
        kind, request = workload.next(terminal, kind)
        t0 = time.perf_counter()
        try:
            answer = await conn.request(request)
        except ResponseTimeout:
            result.timeouts += 1
            await reverse(conn, terminal, request)
            return
        except (ConnectionError, OSError):
            result.errors += 1
            raise
        terminal.batch.record(request, answer)
        code = str(answer.get("39", "??"))
        result.record(kind, code, (time.perf_counter() - t0) * 1000)
        if kind == "preauth" and code == "00":
            await complete(conn, terminal, request)

    async def template_one(conn: Any, terminal: PosTerminal, kind: str) -> None:
        # Over MQTT: the template's bytes are published as they are, and the answer checked without decoding it.
        assert prepared is not None
        card = workload.random.choice(workload.swipeable(terminal) if kind in SWIPE_KINDS else workload.cards)
        request = prepared.prepare(terminal, kind, card, workload.amount())
        sent_at = time.perf_counter()
        try:
            raw = await conn.send_raw(request.payload, request.stan.decode())
        except ResponseTimeout:
            result.timeouts += 1
            await reverse(conn, terminal, request.fields())
            return
        except (ConnectionError, OSError):
            result.errors += 1
            raise
        code = _template_answer(result, request, raw, layouts.spans(raw), prepared.des, sent_at)
        if kind == "preauth" and code == rc.APPROVED:
            await complete(conn, terminal, request.fields())

    async def reverse(conn: TerminalConnection, terminal: PosTerminal, request: dict[str, Any]) -> None:
        # A request unanswered in time is reversed, as a terminal does; the run has already failed on it.
        reversal = terminal.reversal(request)
        with contextlib.suppress(Exception):
            terminal.batch.record(reversal, await conn.request(reversal))

    async def complete(conn: TerminalConnection, terminal: PosTerminal, request: dict[str, Any]) -> None:
        completion = terminal.completion(request, int(request["4"]))
        t1 = time.perf_counter()
        answer = await conn.request(completion)
        terminal.batch.record(completion, answer)
        result.record("completion", str(answer.get("39", "??")), (time.perf_counter() - t1) * 1000)

    # A terminal is one device: its DUKPT counter must reach the engine in order, so connections that share
    # a terminal take turns with it, one transaction at a time.
    shared = Counter(id(terminals[i % len(terminals)]) for i in range(connections))
    turns = {key: asyncio.Lock() for key, count in shared.items() if count > 1}

    async def session(index: int) -> None:
        conn = conns[index]
        terminal = terminals[index % len(terminals)]
        turn = turns.get(id(terminal))
        while time.perf_counter() < deadline:
            if tokens is not None:
                try:
                    await asyncio.wait_for(tokens.get(), timeout=max(0.001, deadline - time.perf_counter()))
                except TimeoutError:
                    return
            try:
                if turn is None:
                    await one(conn, terminal)
                else:
                    async with turn:
                        await one(conn, terminal)
            except (ConnectionError, OSError):
                return

    run = None
    if prepared is not None and mqtt is None:
        run = _TemplateRun(workload, result, prepared, deadline, one, reverse, complete,
                           _Tokens(max(1, connections * 4)) if rate else None)
        template_turns = {key: _Turn() for key in turns}

    async def pacer() -> None:
        assert rate
        interval = 1.0 / rate
        next_at = time.perf_counter()
        while next_at < deadline:
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if run is not None and run.tokens is not None:
                run.tokens.put()
            elif tokens is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    tokens.put_nowait(None)
        if run is not None and run.tokens is not None:
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            run.tokens.release_all()

    async def reporter() -> None:
        while True:
            await asyncio.sleep(1.0)
            if meter is not None:
                await meter.sample()
            line = result.progress(time.perf_counter() - started)
            if progress:
                progress(line)

    tasks: list[asyncio.Future[None]]
    if run is not None:
        # Template sessions run from the connections' readers: each answer starts the session's next request.
        tasks = [
            run.start(conns[i], terminals[i % len(terminals)], template_turns.get(id(terminals[i % len(terminals)])))
            for i in range(connections)
        ]
    else:
        tasks = [asyncio.create_task(session(i)) for i in range(connections)]
    helpers = [asyncio.create_task(reporter())]
    if rate:
        helpers.append(asyncio.create_task(pacer()))
    try:
        await asyncio.wait(tasks, timeout=seconds + timeout_s * 2 + 5)
        if meter is not None:
            result.cpu = await meter.end(result.count)
            meter = None
        if close_batches:
            result.batches = await _close_batches(conns, by_terminal, terminals, timeout_s)
    finally:
        if meter is not None:
            await meter.cancel()
        spawned = list(run.tasks) if run is not None else []
        for task in [*tasks, *helpers, *spawned]:
            task.cancel()
        await asyncio.gather(*tasks, *helpers, *spawned, return_exceptions=True)
        for conn in {id(c): c for c in [*conns, *by_terminal.values()]}.values():
            await conn.close()
        gc.unfreeze()
    result.seconds = time.perf_counter() - started
    return result


def _template_answer(
    result: LoadResult, request: Prepared, raw: bytes, spans: dict[str, tuple[int, int]] | None, des: Any, sent_at: float,
) -> str | None:
    """Count the answer to a template request: its code and latency, and an approval in the terminal's batch;
    an answer that is not the engine's (Prepared.check) counts as such. The code when it was counted."""
    latency_us = int((time.perf_counter() - sent_at) * 1_000_000)
    code, problem = request.check(raw, spans, des)
    if problem is not None or code is None or spans is None:
        result.unauthentic += 1
        return None
    result.record_us(request.kind, code, latency_us)
    if code in rc.APPROVALS and request.template.debit_or_credit is not None:
        amount = spans.get("4")
        amount_minor = int(raw[amount[0] : amount[1]]) if amount is not None else request.amount_minor
        request.terminal.batch.add(request.stan.decode(), request.de7.decode(), request.template.debit_or_credit, amount_minor)
    return code


class _Turn:
    """A shared terminal's turn, handed from one template session to the next without a task switch."""

    def __init__(self) -> None:
        self.busy = False
        self.waiting: deque[Callable[[], None]] = deque()

    def take(self, then: Callable[[], None]) -> bool:
        """True when the turn is the caller's now; else `then` is called when it is."""
        if not self.busy:
            self.busy = True
            return True
        self.waiting.append(then)
        return False

    def give(self) -> None:
        if self.waiting:
            asyncio.get_running_loop().call_soon(self.waiting.popleft())
        else:
            self.busy = False


class _Tokens:
    """The open loop's request tokens for template sessions: a session without one waits as a callback."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.waiting: deque[Callable[[], None]] = deque()

    def take(self, then: Callable[[], None]) -> bool:
        """True when a token was free (and is the caller's now); else `then` is called with the next one."""
        if self.count:
            self.count -= 1
            return True
        self.waiting.append(then)
        return False

    def put(self) -> None:
        if self.waiting:
            self.waiting.popleft()()
        elif self.count < self.limit:
            self.count += 1

    def release_all(self) -> None:
        """The run is over: every waiting session hears it (and finishes)."""
        waiting, self.waiting = self.waiting, deque()
        for then in waiting:
            then()


FullPath = Callable[..., Awaitable[None]]


class _TemplateRun:
    """What the template sessions of one run share."""

    def __init__(
        self, workload: Workload, result: LoadResult, prepared: RequestTemplates, deadline: float,
        one: FullPath, reverse: FullPath, complete: FullPath, tokens: _Tokens | None,
    ) -> None:
        self.workload = workload
        self.result = result
        self.prepared = prepared
        self.deadline = deadline
        self.one = one
        self.reverse = reverse
        self.complete = complete
        self.tokens = tokens
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, conn: TerminalConnection, terminal: PosTerminal, turn: _Turn | None) -> asyncio.Future[None]:
        session = _TemplateSession(self, conn, terminal, turn)
        session.advance()
        return session.done

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _TemplateSession:
    """One connection's closed loop of transactions: a template kind goes out from its template and its answer,
    handed over by the connection's reader, starts the next transaction there and then; the other kinds (PIN,
    chip, a preauth's completion, a reversal) run the full terminal path in a task of their own."""

    def __init__(self, run: _TemplateRun, conn: TerminalConnection, terminal: PosTerminal, turn: _Turn | None) -> None:
        self.run = run
        self.conn = conn
        self.terminal = terminal
        self.turn = turn
        self.holding = False
        self.terminal_id = terminal.terminal_id.ljust(8).encode("ascii")
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.request: Prepared | None = None
        self.sent_at = 0.0

    def advance(self, token: bool = False) -> None:
        """Start the next transaction (with an open loop's `token`, or when one is free), or finish when the
        run is over."""
        run = self.run
        if self.done.done():
            return
        if time.perf_counter() >= run.deadline or self.conn.closed:
            self._finish()
            return
        if run.tokens is not None and not token and not run.tokens.take(self._with_token):
            return
        if self.turn is not None:
            if not self.turn.take(self._go):
                return
            self.holding = True
        self._go()

    def _with_token(self) -> None:
        self.advance(token=True)

    def _go(self) -> None:
        if self.turn is not None:
            self.holding = True
        run = self.run
        workload = run.workload
        kind = workload.choose_kind()
        if kind not in TEMPLATE_KINDS or self.terminal.ipek is None:
            run.spawn(self._full(run.one(self.conn, self.terminal, kind)))
            return
        terminal = self.terminal
        card = workload.random.choice(workload.swipeable(terminal) if kind in SWIPE_KINDS else workload.cards)
        request = self.request = run.prepared.prepare(terminal, kind, card, workload.amount())
        self.sent_at = time.perf_counter()
        try:
            self.conn.send_prepared(request.framed, self.terminal_id, request.stan, self._answered)
        except ConnectionError:
            run.result.errors += 1
            self._finish()

    async def _full(self, transaction: Awaitable[None]) -> None:
        try:
            await transaction
        except (ConnectionError, OSError):
            self._finish()
            return
        self._next()

    def _answered(self, raw: bytes | None, spans: dict[str, tuple[int, int]] | None) -> None:
        run, request = self.run, self.request
        assert request is not None
        result = run.result
        if raw is None:
            if self.conn.closed:
                result.errors += 1
                self._finish()
            else:
                result.timeouts += 1
                run.spawn(self._full(run.reverse(self.conn, self.terminal, request.fields())))
            return
        code = _template_answer(run.result, request, raw, spans, run.prepared.des, self.sent_at)
        if request.kind == "preauth" and code == rc.APPROVED:
            run.spawn(self._full(run.complete(self.conn, self.terminal, request.fields())))
            return
        self._next()

    def _next(self) -> None:
        if self.holding:
            self.holding = False
            assert self.turn is not None
            self.turn.give()
        self.advance()

    def _finish(self) -> None:
        if self.holding:
            self.holding = False
            assert self.turn is not None
            self.turn.give()
        if not self.done.done():
            self.done.set_result(None)


class _CpuMeter:
    """The CPU of this generator over the timed run, and when asked the engine's processes', the database's
    backends' and the decode unit measured beside them."""

    def __init__(self, engine: ProcessCpu | None, postgres: PostgresCpu | None, unit: DecodeUnit | None) -> None:
        self.engine = engine
        self.postgres = postgres
        self.unit = unit
        # The kernel's own accounting of this process (all its threads): user and system time apart.
        self.generator_start = os.times()

    @classmethod
    async def begin(
        cls, workload: Workload, terminals: list[PosTerminal], conn: Any, seconds: float,
        engine_pids: list[int] | None, postgres_url: str | None,
    ) -> "_CpuMeter":
        if not engine_pids and not postgres_url:
            return cls(None, None, None)
        # The decode unit decodes the request the run sends most: its first kind, built and MACed as sent.
        terminal = terminals[0]
        kind = next((k for k in workload.kinds if k not in CHIP_KINDS), None)
        if kind is not None:
            _, request = workload.next(terminal, kind)
        else:
            # A chip-only run: a keyed request of the same terminal stands in (the chip kinds exchange several).
            sample = CardData(pan="4761739001010010", expiry="3012", track2="4761739001010010=30122010000000000000", cvv2="123")
            request = terminal.card_request(sample, 1000, entry="manual", cvv2=sample.cvv2)
        raw, _, _ = outgoing(getattr(conn, "terminals", {}), request)
        unit = DecodeUnit(raw, max(1.0, seconds - 0.5))
        await unit.start()
        postgres = PostgresCpu(postgres_url) if postgres_url else None
        if postgres is not None:
            await postgres.start()
        engine = ProcessCpu(list(engine_pids)) if engine_pids else None
        if engine is not None:
            engine.start()
        return cls(engine, postgres, unit)

    async def sample(self) -> None:
        if self.engine is not None:
            self.engine.sample()
        if self.postgres is not None:
            await self.postgres.sample()

    async def end(self, answers: int) -> CpuFigures:
        now = os.times()
        user_s = now.user - self.generator_start.user
        system_s = now.system - self.generator_start.system
        engine_s = self.engine.stop() if self.engine is not None else None
        postgres_s = await self.postgres.stop() if self.postgres is not None else None
        unit = await self.unit.result() if self.unit is not None else {"decode_us": None}
        return CpuFigures(answers, engine_s, user_s + system_s, unit["decode_us"], postgres_s, generator_system_s=system_s)

    async def cancel(self) -> None:
        if self.unit is not None:
            await self.unit.cancel()


async def _close_batches(
    conns: list[Any], by_terminal: dict[str, Any], terminals: list[PosTerminal], timeout_s: float
) -> list[BatchReport]:
    """Close each terminal's batch once: on its own broker connection, or on the first TCP connection still open."""
    reports = []
    seen: set[int] = set()
    for terminal in terminals:
        if id(terminal) in seen:
            continue
        seen.add(id(terminal))
        conn = by_terminal.get(terminal.terminal_id) or next((c for c in conns if not c.closed), None)
        if conn is None or conn.closed:
            raise ConnectionError(f"no connection left to close the batch of terminal {terminal.terminal_id} on")
        reports.append(await close_batch(conn, terminal, timeout_s=timeout_s))
    return reports


@dataclass(frozen=True)
class MqttTarget:
    """Drive the engines through a broker: its URL, and each terminal's broker password."""

    url: str
    passwords: dict[str, str] = field(default_factory=dict)
    retry_after_s: float = 1.0
    max_in_flight: int = 64

    async def connect_all(self, terminals: list[PosTerminal], *, timeout_s: float) -> dict[str, Any]:
        """One connection per distinct terminal, opened concurrently; all closed again if one fails."""
        from terminal_sim.mqtt_client import MqttTerminalConnection

        ids = list(dict.fromkeys(t.terminal_id for t in terminals))
        opened = await asyncio.gather(
            *(
                MqttTerminalConnection.connect(self.url, tid, password=self.passwords.get(tid), timeout_s=timeout_s,
                                               retry_after_s=self.retry_after_s, max_in_flight=self.max_in_flight)
                for tid in ids
            ),
            return_exceptions=True,
        )
        failure = next((c for c in opened if isinstance(c, BaseException)), None)
        if failure is not None:
            for conn in opened:
                if not isinstance(conn, BaseException):
                    await conn.close()
            raise failure
        return dict(zip(ids, opened, strict=True))


def load_json_list(path: str) -> list[dict[str, Any]]:
    """A JSON list, or JSON lines, of objects as `processor ... --json` prints them."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read().strip()
    if text.startswith("["):
        data = json.loads(text)
    else:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ValueError(f"{path}: expected a JSON list of objects")
    return data
