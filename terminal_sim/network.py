"""A simulated acquiring network: other acquirers' merchants use our cards, dual message (as Base II / IPM).

One TCP connection carries the authorizations (0100, card not present with CVV2, DE 22 `01`) of several
merchants of the network, each with its own terminal (DE 41), merchant id (DE 42), name (DE 43) and MCC
(DE 18), all under the network's acquirer id (DE 32). The connection has its own DUKPT key, given by the
issuer when it registered the network: every request carries a KSN (DE 53) and a MAC, and every answer's
MAC is checked. At the end of its day the network writes a clearing
file of first presentments (`processor.iso8583.clearing`), one per approved authorization, with the
approval code and RRN the issuer answered. It uses only the wire spec and the clearing-file layout.

`--scenarios` adds the classic clearing cases to the file: a presentment above its authorization
(over tolerance), one without any authorization, a duplicate of an earlier one, and a refund.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.iso8583 import encode_de48
from processor.iso8583.clearing import ClearingWriter, Presentment
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import CardData, PosTerminal

MERCHANTS = (
    ("NETBOOK1", "BOOKSHOP0000001", "5942", "Paper Lantern Books     Lyon         FR"),
    ("NETCAFE1", "CAFE00000000001", "5814", "Cafe du Coin            Lille        FR"),
    ("NETHOTL1", "HOTEL0000000009", "7011", "Hotel des Alpes         Annecy       FR"),
    ("NETFUEL1", "FUEL00000000007", "5541", "Station Nord            Reims        FR"),
)


@dataclass
class NetworkDay:
    """What the network did in its day: approved authorizations and every answer code."""

    approved: list[tuple[dict[str, Any], dict[str, Any], CardData]] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"authorizations": sum(self.codes.values()), "approved": len(self.approved), "codes": self.codes}


class AcquiringNetwork:
    """The network's side of the wire: builds authorizations for its merchants and writes its clearing file."""

    def __init__(
        self, acquirer_id: str, key: dict[str, Any], merchants: int = 3, currency_numeric: str = "978", seed: int = 7
    ) -> None:
        """`key` is the network's registration at the issuer (`processor settle network add --json`): its
        initial KSN and IPEK, under which every message of the connection is MACed and every answer checked."""
        if not 1 <= merchants <= len(MERCHANTS):
            raise ValueError(f"the simulated network has 1 to {len(MERCHANTS)} merchants")
        if not key.get("ipek") or not key.get("initial_ksn"):
            raise ValueError("the network's key (ipek and initial_ksn, as `processor settle network add --json` prints) is missing")
        self.acquirer_id = acquirer_id.rjust(6, "0")
        self.merchants = MERCHANTS[:merchants]
        # One DUKPT key for the whole connection: one transaction counter across all its merchants' terminals.
        self.signer = PosTerminal(terminal_id="NETWORK", merchant_id="", ipek=key["ipek"], initial_ksn=key["initial_ksn"])
        self.currency_numeric = currency_numeric
        self._stan = itertools.count(1)
        self._arn = itertools.count(1)
        self.random = random.Random(seed)

    def authorization(self, card: CardData, amount_minor: int, merchant: int, now: dt.datetime | None = None) -> dict[str, Any]:
        terminal_id, merchant_id, mcc, name = self.merchants[merchant % len(self.merchants)]
        now = now or dt.datetime.now(dt.UTC)
        stan = f"{next(self._stan) % 1_000_000 or 1:06d}"
        return {
            "t": "0100", "2": card.pan, "3": "000000", "4": f"{amount_minor:012d}", "7": now.strftime("%m%d%H%M%S"),
            "11": stan, "12": now.strftime("%H%M%S"), "13": now.strftime("%m%d"), "14": card.expiry, "18": mcc,
            "22": "012", "32": self.acquirer_id, "37": f"{now.year % 10}{now.strftime('%j%H')}{stan}",
            "41": terminal_id, "42": merchant_id, "43": name.ljust(40)[:40], "48": encode_de48({"C2": card.cvv2}),
            "49": self.currency_numeric,
        }

    def registrations(self) -> list[dict[str, str]]:
        """The merchants the issuer must register for this network (`processor settle network merchant`)."""
        return [{"terminal_id": t, "merchant_id": m, "mcc": mcc, "name": name[:23].strip(), "location": name[23:].strip()}
                for t, m, mcc, name in self.merchants]

    def connect(self, conn: TerminalConnection) -> None:
        """MAC this network's requests on `conn` (by their DE 41) under the network's key, and check the answers."""
        for terminal_id, *_ in self.merchants:
            conn.terminals[terminal_id] = self.signer

    async def run(self, conn: TerminalConnection, cards: list[CardData], count: int) -> NetworkDay:
        """Send `count` authorizations spread over the merchants and cards, each MACed; keep the approved ones."""
        self.connect(conn)
        day = NetworkDay()
        for i in range(count):
            card = cards[i % len(cards)]
            request = self.authorization(card, self.random.randint(5_00, 80_00), i)
            answer = await conn.request(request)
            code = answer.get("39", "--")
            day.codes[code] = day.codes.get(code, 0) + 1
            if code in ("00", "10"):
                day.approved.append((request, answer, card))
        return day

    def presentment(self, request: dict[str, Any], answer: dict[str, Any], *, amount_minor: int | None = None,
                    approval_code: str | None = None, processing_code: str = "000000") -> Presentment:
        approved = int(answer.get("4", request["4"]))
        return Presentment(
            pan=request["2"], amount_minor=amount_minor if amount_minor is not None else approved,
            currency_numeric=request["49"], local_time=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
            mcc=request["18"], entry_mode=request["22"][:2], acquirer_id=self.acquirer_id, rrn=request["37"],
            approval_code=answer.get("38", "") if approval_code is None else approval_code,
            terminal_id=request["41"], merchant_id=request["42"], name_location=request["43"],
            arn=f"7{self.acquirer_id[-6:]}{dt.date.today():%y%j}{next(self._arn):011d}"[:23],
            processing_code=processing_code,
        )

    def write_clearing_file(self, day: NetworkDay, path: Path, *, file_id: str, business_date: dt.date,
                            scenarios: bool = False) -> dict[str, Any]:
        """The day's first presentments (plus the classic cases when `scenarios`); what was written."""
        cases: dict[str, int] = {"presented": 0}
        with ClearingWriter(path, file_id=file_id, network=self.acquirer_id, business_date=business_date) as writer:
            approved = list(day.approved)
            for n, (request, answer, card) in enumerate(approved):
                if scenarios and n == 0:
                    # A tip on top of a restaurant bill beyond the issuer's tolerance.
                    writer.add(self.presentment(request, answer, amount_minor=int(request["4"]) * 2))
                    cases["over_tolerance"] = 1
                    continue
                presentment = self.presentment(request, answer)
                writer.add(presentment)
                cases["presented"] += 1
                if scenarios and n == 1:
                    writer.add(presentment)  # the acquirer's system sent it twice
                    cases["duplicate"] = 1
            if scenarios and approved:
                request, answer, card = approved[-1]
                writer.add(self.presentment(request, answer, approval_code="", amount_minor=12_34))
                cases["no_authorization"] = 1
                writer.add(self.presentment(request, answer, amount_minor=5_00, approval_code="", processing_code="200000"))
                cases["refund"] = 1
        return {"path": str(path), "file_id": file_id, "records": writer.count, "control_sum_minor": writer.control_sum,
                **cases}
