"""`python -m demo.bench_vault`: what the PAN vault costs the engine.

The same engine, store and requests are timed twice, in process (no TCP, so the vault's share is not
diluted by the transport): once as it runs in production, where a card is found by the HSM's keyed
fingerprint of the incoming PAN and one indexed read; once with card look-up replaced by a dictionary
from PAN to card built beforehand, i.e. an issuer with no tokenization at all. The ratio is the price
of never holding a clear PAN.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

from processor import issuing
from processor.auth.engine import CARD_CHECKS, AuthContext, Declined, Engine, check_card_known
from processor.config import Settings
from processor.iso8583 import encode, rc
from terminal_sim.pos import CardData, PosTerminal


async def _measure(engine: Engine, requests: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        await asyncio.gather(*(engine.handle(r) for r in requests[i : i + batch]))
    return len(requests) / (time.perf_counter() - start)


async def run(cards: int, requests_per_round: int, rounds: int, batch: int) -> dict[str, Any]:
    from hsm_sim import connect
    from processor.issuing import ensure_issuer_keys
    from processor.issuing.provisioning import provision
    from processor.ledger import Store

    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp}/db.sqlite", hsm_url=f"file:{tmp}/hsm.json")
        store = await Store.open(settings.db_url)
        hsm = await connect(settings.hsm_url)
        try:
            keys = await ensure_issuer_keys(store, hsm)
            population = await provision(store, hsm, keys, cardholders=cards, terminals=1, deposit_minor=10_000_000_00, label="vault")
            terminal = PosTerminal.from_registered(population.terminals[0])
            by_pan = {c["pan"]: await issuing.cards.get(store, c["id"]) for c in population.cards}
            card_data = [CardData.from_issued(c, c["pin"]) for c in population.cards]

            async def free_lookup(engine: Engine, ctx: AuthContext) -> None:
                pan = ctx.request.pan or (ctx.request.track2.pan if ctx.request.track2 else None)
                ctx.pan = pan
                ctx.card = by_pan.get(pan or "")
                if ctx.card is None:
                    raise Declined(rc.UNKNOWN_CARD, "card not issued here")

            free_checks = tuple(free_lookup if c is check_card_known else c for c in CARD_CHECKS)
            engines = {"vault": Engine(store, hsm, keys), "no_vault": Engine(store, hsm, keys, card_checks=free_checks)}
            rates: dict[str, list[float]] = {"vault": [], "no_vault": []}
            for _ in range(rounds):
                for label, engine in engines.items():
                    requests = [
                        encode(terminal.card_request(card_data[i % len(card_data)], 1_00, entry="magstripe"))
                        for i in range(requests_per_round)
                    ]
                    rates[label].append(await _measure(engine, requests, batch))
        finally:
            await hsm.close()
            await store.close()
    vault, no_vault = statistics.median(rates["vault"]), statistics.median(rates["no_vault"])
    return {
        "authorizations_per_s_with_vault": round(vault),
        "authorizations_per_s_without_vault": round(no_vault),
        "vault_cost_percent": round((1 - vault / no_vault) * 100, 1),
        "rounds": rounds,
        "requests_per_round": requests_per_round,
        "concurrency": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.bench_vault", description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--requests", type=int, default=6000, help="authorizations per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    from processor.logs import quiet_library_deprecations

    quiet_library_deprecations()
    print(json.dumps(asyncio.run(run(args.cards, args.requests, args.rounds, args.concurrency))))


if __name__ == "__main__":
    main()
