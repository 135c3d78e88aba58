"""The HSM stops while terminals keep sending: every answer says 91 (issuer inoperative), no PIN try is
spent, nothing is recorded; when the HSM is back the engine serves again by itself."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from engine_helpers import build_issuer

from hsm_sim import Hsm
from hsm_sim.pki import ServerTls, init_ca, issue
from hsm_sim.server import HsmServer
from processor import issuing, ledger
from processor.config import Settings
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection


async def test_hsm_down_answers_91_spends_no_pin_try_and_the_engine_recovers(tmp_path: Path) -> None:
    local = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(local)
    pki = init_ca(tmp_path / "pki")
    issue(pki, role="engine", name="engine")
    hsm = Hsm.open(tmp_path / "hsm.json")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki))
    await server.start("127.0.0.1", 0)
    port = server.port
    shop, grace = terminals["shop"], cards["grace"]
    try:
        settings = dataclasses.replace(local, hsm_url=f"tcps://127.0.0.1:{port}", hsm_tls_dir=pki)
        async with running_engine(settings) as running:
            async with await TerminalConnection.connect("127.0.0.1", running.port, terminals=[shop]) as conn:
                assert (await conn.request(shop.card_request(grace, 1_00, entry="magstripe", with_pin=True)))["39"] == "00"
                await server.close()
                # Under load: right and wrong PINs, plain swipes; none may look like a wrong PIN.
                burst = [
                    shop.card_request(grace, 1_00, entry="magstripe", with_pin=True, pin=pin)
                    for pin in ("0000", "1111", "1234", "2222")
                ] + [shop.card_request(grace, 1_00, entry="magstripe") for _ in range(6)]
                codes = [(await conn.request(request))["39"] for request in burst]
                assert set(codes) == {"91"}, codes
                card = await issuing.cards.get(running.store, grace.card_id)
                assert card.pin_tries == 0
                server = HsmServer(hsm, tls=ServerTls.from_dir(pki))
                await server.start("127.0.0.1", port)
                answer = None
                for _ in range(50):  # the client reconnects on its next command
                    answer = await conn.request(shop.card_request(grace, 2_00, entry="magstripe", with_pin=True))
                    if answer["39"] != "91":
                        break
                    await asyncio.sleep(0.1)
                assert answer is not None and answer["39"] == "00"
                view = await ledger.accounts.get(running.store, accounts["grace"])
                assert view.ledger_minor == 300_00 - 1_00 - 2_00
    finally:
        await server.close()
        await hsm.close()
