"""`hsm-sim bench`: operations per second of the commands on an issuer's hot path, in process, over plain
TCP and over mutual TLS.

The bench forms its keys from known components (as a test key ceremony would) in a key store of its
own, so it can build valid PIN blocks and cryptograms outside the HSM. It then serves that key store
twice, each server a subprocess on loopback: `hsm-sim serve` with the bench's own CA (the engine's
certificate), and the unauthenticated baseline. Rounds alternate between the two so both see the same
machine; the report gives the median of the rounds for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsm_sim.crypto import dukpt, emv, pinblock
from hsm_sim.crypto.cvv import generate_cvv
from hsm_sim.crypto.des import tdes_ecb_encrypt

PAN = "4761739001010010"
COMPONENTS = {  # distinct keys: the XOR of each pair differs
    "TPK": ["1C" * 16, "02" * 16],
    "ZPK": ["2C" * 16, "04" * 16],
    "PVK": ["3B" * 16, "08" * 16],
    "CVK": ["4F" * 16, "10" * 16],
    "BDK": ["0123456789ABCDEFFEDCBA9876543210", "00" * 16],
    "IMK-AC": ["5D" * 16, "20" * 16],
}
VARIANTS = 512  # distinct requests cycled through, so caches see realistic variety
# What the engine does on the hot path: the network runs measure these, as the engine role.
NETWORK_OPERATIONS = ("pin_verify", "pin_verify_dukpt", "cvv_verify", "arqc_verify")


def _key(name: str) -> bytes:
    a, b = (bytes.fromhex(c) for c in COMPONENTS[name])
    return bytes(x ^ y for x, y in zip(a, b))


async def _form_keys(hsm: Any) -> tuple[dict[str, str], str]:
    """The bench's keys in an in-process HSM, and the PVV of PIN 1234."""
    kcv = {key_type: (await hsm.form_key_from_components(key_type, components)).kcv for key_type, components in COMPONENTS.items()}
    return kcv, await hsm.generate_pin_verification("1234", PAN, kcv["PVK"], "pvv")


def _operations(hsm: Any, kcv: dict[str, str], pvv: str) -> dict[str, Callable[[int], Any]]:
    """Per operation, a function i -> coroutine of the i-th request."""
    tpk_blocks = [tdes_ecb_encrypt(_key("TPK"), pinblock.encode_pin_block("1234", PAN, 0)).hex() for _ in range(VARIANTS)]
    bdk = _key("BDK")
    dukpt_blocks = []
    for i in range(VARIANTS):
        ksn = bytes.fromhex(f"FFFF9876543210E{(i * 7 + 1) % 0x1FFFFF or 1:05X}")
        if bin(int.from_bytes(ksn, "big") & dukpt.COUNTER_MASK).count("1") > dukpt.MAX_COUNTER_ONE_BITS:
            ksn = bytes.fromhex("FFFF9876543210E00001")
        key = dukpt.pin_encryption_key(dukpt.derive_transaction_key(dukpt.derive_ipek(bdk, ksn), ksn))
        dukpt_blocks.append((tdes_ecb_encrypt(key, pinblock.encode_pin_block("1234", PAN, 0)).hex(), ksn.hex()))
    cvvs = [generate_cvv(_key("CVK"), PAN, f"{30 + i % 9}12", "000") for i in range(VARIANTS)]
    icc_mk = emv.derive_icc_master_key(_key("IMK-AC"), PAN, "00", cvn=18)
    arqcs = []
    for i in range(VARIANTS):
        atc = (i + 1).to_bytes(2, "big")
        data = os.urandom(29) + atc + bytes.fromhex("06011203A00000")
        session = emv.derive_session_key(icc_mk, atc, cvn=18)
        arqcs.append((atc.hex(), emv.generate_arqc(session, data, cvn=18).hex(), data.hex()))
    return {
        "pin_translate": lambda i: hsm.translate_pin(tpk_blocks[i % VARIANTS], PAN, kcv["TPK"], 0, kcv["ZPK"], 0),
        "pin_verify": lambda i: hsm.verify_pin(
            tpk_blocks[i % VARIANTS], PAN, kcv["TPK"], 0, kcv["PVK"], method="pvv", verification_value=pvv
        ),
        "pin_verify_dukpt": lambda i: hsm.verify_pin(
            dukpt_blocks[i % VARIANTS][0], PAN, kcv["BDK"], 0, kcv["PVK"], method="pvv", verification_value=pvv,
            ksn=dukpt_blocks[i % VARIANTS][1],
        ),
        "cvv_verify": lambda i: hsm.verify_cvv(kcv["CVK"], PAN, f"{30 + i % VARIANTS % 9}12", "000", cvvs[i % VARIANTS]),
        "arqc_verify": lambda i: hsm.verify_arqc(
            kcv["IMK-AC"], PAN, "00", arqcs[i % VARIANTS][0], arqcs[i % VARIANTS][1], arqcs[i % VARIANTS][2], cvn=18, arc="3030"
        ),
        "dukpt_ipek": lambda i: hsm.inject_ipek(kcv["BDK"], f"FFFF9876{i % 65536:06X}E00000"),
    }


async def _rate_in_process(make: Callable[[int], Any], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for i in range(count, count + 200):
            await make(i)
        count += 200
    return count / (time.perf_counter() - start)


async def _rate_pipelined(make: Callable[[int], Any], seconds: float, in_flight: int) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        results = await asyncio.gather(*(make(i) for i in range(count, count + in_flight)))
        if not all(r is True or (isinstance(r, tuple) and r[0] is True) for r in results):
            raise RuntimeError("a request the bench built to verify did not verify")
        count += in_flight
    return count / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    return subprocess.Popen([sys.executable, "-m", *args, "--port", str(port)], stdout=subprocess.DEVNULL), port


async def _until_up(connect: Callable[[], Any]) -> Any:
    for _ in range(150):
        try:
            return await connect()
        except Exception:
            await asyncio.sleep(0.1)
    raise RuntimeError("the bench's HSM server did not start")


async def run_bench(seconds: float = 1.0, rounds: int = 3, in_flight: int = 256) -> dict[str, Any]:
    """{"in_process": {op: ops/s}, "tcp": {...}, "tls": {...}, ...}: medians of `rounds` runs of `seconds` each."""
    from hsm_sim import ClientTls, Hsm, connect
    from hsm_sim.client import HsmClient
    from hsm_sim.pki import init_ca, issue

    results: dict[str, Any] = {"seconds_per_round": seconds, "rounds": rounds, "in_flight": in_flight, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as tmp:
        keystore = Path(tmp) / "keystore.json"
        hsm = Hsm.open(keystore)
        kcv, pvv = await _form_keys(hsm)
        ops = _operations(hsm, kcv, pvv)
        results["in_process"] = {
            name: round(statistics.median([await _rate_in_process(make, seconds) for _ in range(rounds)])) for name, make in ops.items()
        }
        await hsm.close()

        pki = init_ca(Path(tmp) / "pki")
        issue(pki, role="engine", name="engine")
        tls_server, tls_port = _start(["hsm_sim.cli", "serve", "--keystore", str(keystore), "--tls", str(pki)])
        plain_server, plain_port = _start(["hsm_sim.bench", "--baseline-server", "--keystore", str(keystore)])
        clients: list[Any] = []
        try:
            tls = ClientTls.from_dir(pki, "engine")
            channels = {
                "tcp": await _until_up(lambda: HsmClient.connect("127.0.0.1", plain_port, max_in_flight=in_flight * 2)),
                "tls": await _until_up(lambda: connect(f"tcps://127.0.0.1:{tls_port}", tls=tls)),
            }
            clients.extend(channels.values())
            rates: dict[str, dict[str, list[float]]] = {channel: {op: [] for op in NETWORK_OPERATIONS} for channel in channels}
            for round_number in range(rounds):
                order = list(channels) if round_number % 2 == 0 else list(reversed(channels))
                for op in NETWORK_OPERATIONS:
                    for channel in order:
                        make = _operations(channels[channel], kcv, pvv)[op]
                        rates[channel][op].append(await _rate_pipelined(make, seconds, in_flight))
            for channel in channels:
                results[channel] = {op: round(statistics.median(values)) for op, values in rates[channel].items()}
        finally:
            for client in clients:
                await client.close()
            for server in (tls_server, plain_server):
                server.terminate()
                server.wait(timeout=10)
    return results


def print_results(results: dict[str, Any]) -> None:
    print(
        f"hsm-sim bench: median of {results['rounds']} rounds of {results['seconds_per_round']} s, "
        f"{results['in_flight']} requests in flight over the network, {results['cpu_count']} CPUs"
    )
    print(f"{'operation':<20} {'in process/s':>13} {'TCP/s':>9} {'TLS/s':>9} {'TLS cost':>9}")
    for name, rate in results["in_process"].items():
        plain, tls = results.get("tcp", {}).get(name), results.get("tls", {}).get(name)
        cost = f"{(plain - tls) / plain * 100:.0f} %" if plain and tls else "-"
        print(f"{name:<20} {rate:>13,} {f'{plain:,}' if plain else '-':>9} {f'{tls:,}' if tls else '-':>9} {cost:>9}")


async def _serve_baseline(keystore: str, port: int) -> None:
    """The unauthenticated baseline: the bench's key store, loopback only, every client the engine role."""
    from hsm_sim import Hsm
    from hsm_sim.server import HsmServer

    hsm = Hsm.open(keystore, audit_path=keystore + ".baseline.audit.jsonl")
    server = HsmServer(hsm, tls=None, unauthenticated_role="engine")
    await server.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
        await hsm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="the bench's unauthenticated baseline server (started by hsm-sim bench)")
    parser.add_argument("--baseline-server", action="store_true", required=True)
    parser.add_argument("--keystore", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve_baseline(args.keystore, args.port))
    except ImportError:
        asyncio.run(_serve_baseline(args.keystore, args.port))


if __name__ == "__main__":
    main()
