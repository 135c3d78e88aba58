"""The engine with its HSM over TCP (PROCESSOR_HSM_URL=tcp://...): same answers as in process."""

from __future__ import annotations

from pathlib import Path

from engine_helpers import build_issuer

from hsm_sim import Hsm
from hsm_sim.server import HsmServer
from processor.config import Settings
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection


async def test_authorizations_through_a_networked_hsm(tmp_path: Path):
    hsm = Hsm.open(tmp_path / "hsm.json")
    server = HsmServer(hsm)
    await server.start("127.0.0.1", 0)
    try:
        settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"tcp://127.0.0.1:{server.port}")
        cards, accounts, terminals = await build_issuer(settings)
        shop = terminals["shop"]
        async with running_engine(settings) as running:
            async with await TerminalConnection.connect("127.0.0.1", running.port) as conn:
                codes = [
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="magstripe", with_pin=True)))["39"],
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="magstripe", with_pin=True, pin="0000")))["39"],
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="manual", cvv2=cards["ada"].cvv2)))["39"],
                    (await conn.request(shop.card_request(cards["carol"], 1_00, entry="magstripe")))["39"],
                ]
        assert codes == ["00", "55", "00", "62"]
        assert server.commands > 10
    finally:
        await server.close()
        await hsm.close()
