"""The engine with its HSM as a service (PROCESSOR_HSM_URL=tcps://..., mutual TLS as the engine role)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from engine_helpers import build_issuer

from hsm_sim import Hsm
from hsm_sim.pki import ServerTls, init_ca, issue
from hsm_sim.server import HsmServer
from processor.config import Settings
from processor.errors import ConfigurationError
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection


async def test_authorizations_through_a_networked_hsm(tmp_path: Path):
    local = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(local)  # issuance: in process, before the HSM is served
    pki = init_ca(tmp_path / "pki")
    issue(pki, role="engine", name="engine")
    hsm = Hsm.open(tmp_path / "hsm.json")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki))
    await server.start("127.0.0.1", 0)
    try:
        settings = dataclasses.replace(local, hsm_url=f"tcps://127.0.0.1:{server.port}", hsm_tls_dir=pki)
        shop = terminals["shop"]
        async with running_engine(settings) as running:
            async with await TerminalConnection.connect("127.0.0.1", running.port, terminals=[shop]) as conn:
                codes = [
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="magstripe", with_pin=True)))["39"],
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="magstripe", with_pin=True, pin="0000")))["39"],
                    (await conn.request(shop.card_request(cards["ada"], 10_00, entry="manual", cvv2=cards["ada"].cvv2)))["39"],
                    (await conn.request(shop.card_request(cards["carol"], 1_00, entry="magstripe")))["39"],
                ]
        assert codes == ["00", "55", "00", "62"]
        assert server.commands > 3
        hsm.audit.flush()
        served = (tmp_path / "hsm.json.audit.jsonl").read_text()
        assert '"by":"engine","role":"engine","cmd":"verify_pin"' in served and '"status":"17"' not in served
        with pytest.raises(ConfigurationError, match="PROCESSOR_HSM_TLS_DIR"):
            async with running_engine(dataclasses.replace(settings, hsm_tls_dir=None)):
                pass
    finally:
        await server.close()
        await hsm.close()
