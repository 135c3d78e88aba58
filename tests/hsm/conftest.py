"""A deployment's CA with one certificate per role, and `hsm-sim serve`'s server on a free loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm_sim import ClientTls, Hsm, connect
from hsm_sim.client import HsmClient
from hsm_sim.pki import ServerTls, init_ca, issue
from hsm_sim.server import HsmServer, ServerLimits

# name -> role of the certificates every served test can use.
CLIENTS = {
    "engine-1": "engine",
    "issuer-1": "issuer",
    "alice": "operator",
    "custodian-1": "custodian",
    "custodian-2": "custodian",
    "loader-1": "key-loader",
}


def make_pki(folder: Path) -> Path:
    init_ca(folder)
    for name, role in CLIENTS.items():
        issue(folder, role=role, name=name)
    return folder


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Served:
    hsm: Hsm
    server: HsmServer
    pki: Path
    audit_path: Path

    @property
    def url(self) -> str:
        return f"tcps://127.0.0.1:{self.server.port}"

    def audit(self) -> list[dict]:
        self.hsm.audit.flush()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def refusals(self) -> list[dict]:
        return [line for line in self.audit() if line["status"] == "17"]


@pytest.fixture
async def served(tmp_path: Path, pki: Path) -> AsyncIterator[Served]:
    hsm = Hsm.open(tmp_path / "ks.json")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki), limits=ServerLimits(frame_timeout_s=0.5, handshake_timeout_s=1.0))
    await server.start("127.0.0.1", 0)
    yield Served(hsm, server, pki, tmp_path / "ks.json.audit.jsonl")
    await server.close()
    await hsm.close()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[Callable[[str], Awaitable[HsmClient]]]:
    """`await client("engine-1")`: a connection as that certificate, closed after the test."""
    opened: list[HsmClient] = []

    async def open_as(name: str) -> HsmClient:
        hsm = await connect(served.url, tls=ClientTls.from_dir(served.pki, name))
        assert isinstance(hsm, HsmClient)
        opened.append(hsm)
        return hsm

    yield open_as
    for hsm in opened:
        await hsm.close()


@pytest.fixture
def hsm_sim_serve() -> Iterator[Callable[[Path, Path, Path], int]]:
    """`port = hsm_sim_serve(keystore, pki, cwd)`: `hsm-sim serve` as a subprocess, up and listening;
    stopped with SIGTERM after the test, which must find it exited cleanly."""
    started: list[subprocess.Popen[bytes]] = []

    def start(keystore: Path, pki: Path, cwd: Path) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        started.append(subprocess.Popen(
            [sys.executable, "-m", "hsm_sim.cli", "serve", "--keystore", str(keystore), "--tls", str(pki), "--port", str(port)],
            cwd=cwd, stdout=subprocess.DEVNULL,
        ))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("hsm-sim serve did not start listening within 15 s")

    yield start
    for proc in started:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, "SIGTERM stops the server cleanly"


def audit_lines(path: Path, *, including: set[tuple[str, str, str]], timeout_s: float = 10.0) -> list[dict]:
    """The audit log of a served HSM once it holds these (by, cmd, status) lines: a server flushes
    its log within 50 ms, refusals at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if {(line["by"], line["cmd"], line["status"]) for line in lines} >= including or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture
def served_audit() -> Callable[..., list[dict]]:
    return audit_lines
