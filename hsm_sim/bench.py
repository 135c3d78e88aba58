"""`hsm-sim bench`: operations per second of the commands on an issuer's hot path, in process and over TCP.

The bench forms its keys from known components (as a test key ceremony would), so it can build valid
PIN blocks and cryptograms outside the HSM; then it times PIN translate, PIN verify (DUKPT), CVV verify,
ARQC verify and DUKPT IPEK derivation, each for a few short rounds, and reports the median rate.
"""

from __future__ import annotations

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
from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.crypto.cvv import generate_cvv

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


def _key(name: str) -> bytes:
    a, b = (bytes.fromhex(c) for c in COMPONENTS[name])
    return bytes(x ^ y for x, y in zip(a, b))


async def _prepare(hsm: Any) -> dict[str, Callable[[int], Any]]:
    """Keys in the HSM and, per operation, a function i -> coroutine of the i-th request."""
    kcv = {}
    for key_type, components in COMPONENTS.items():
        try:
            kcv[key_type] = (await hsm.form_key_from_components(key_type, components)).kcv
        except Exception as exc:  # the key exists already (a reused key store)
            if getattr(exc, "code", "") != "11":
                raise
            from hsm_sim.crypto.des import kcv as check_value

            kcv[key_type] = check_value(_key(key_type), "TDES")
    pvv = await hsm.generate_pin_verification("1234", PAN, kcv["PVK"], "pvv")
    tpk_blocks = [tdes_ecb_encrypt(_key("TPK"), pinblock.encode_pin_block("1234", PAN, 0)).hex() for _ in range(VARIANTS)]
    bdk = _key("BDK")
    dukpt_blocks = []
    for i in range(VARIANTS):
        ksn = bytes.fromhex(f"FFFF9876543210E{(i * 7 + 1) % 0x1FFFFF or 1:05X}")
        counter = int.from_bytes(ksn, "big") & dukpt.COUNTER_MASK
        if bin(counter).count("1") > 10:
            ksn = bytes.fromhex("FFFF9876543210E00001")
        key = dukpt.pin_encryption_key(dukpt.derive_transaction_key(dukpt.derive_ipek(bdk, ksn), ksn))
        dukpt_blocks.append((tdes_ecb_encrypt(key, pinblock.encode_pin_block("1234", PAN, 0)).hex(), ksn.hex()))
    cvvs = [generate_cvv(_key("CVK"), PAN, f"{30 + i % 9}12", "000") for i in range(VARIANTS)]
    icc_mk = emv.derive_icc_master_key(_key("IMK-AC"), PAN, "00")
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
            dukpt_blocks[i % VARIANTS][0], PAN, kcv["BDK"], 0, kcv["PVK"], method="pvv", verification_value=pvv, ksn=dukpt_blocks[i % VARIANTS][1]
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
        await asyncio.gather(*(make(i) for i in range(count, count + in_flight)))
        count += in_flight
    return count / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_bench(seconds: float = 1.0, rounds: int = 3, in_flight: int = 256) -> dict[str, Any]:
    """{"in_process": {op: ops/s}, "tcp": {op: ops/s}, ...}: medians of `rounds` runs of `seconds` each."""
    from hsm_sim import Hsm
    from hsm_sim.client import HsmClient

    results: dict[str, Any] = {"seconds_per_round": seconds, "rounds": rounds, "in_flight": in_flight, "cpu_count": os.cpu_count()}
    hsm = Hsm.ephemeral()
    ops = await _prepare(hsm)
    results["in_process"] = {
        name: round(statistics.median([await _rate_in_process(make, seconds) for _ in range(rounds)]))
        for name, make in ops.items()
    }
    await hsm.close()

    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as tmp:
        port = _free_port()
        keystore = Path(tmp) / "keystore.json"
        server = subprocess.Popen(
            [sys.executable, "-m", "hsm_sim.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--keystore", str(keystore)],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = None
            for _ in range(100):
                try:
                    client = await HsmClient.connect("127.0.0.1", port, max_in_flight=in_flight * 2)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            if client is None:
                raise RuntimeError("hsm-sim serve did not start")
            ops = await _prepare(client)
            results["tcp"] = {
                name: round(statistics.median([await _rate_pipelined(make, seconds, in_flight) for _ in range(rounds)]))
                for name, make in ops.items()
            }
            await client.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    return results


def print_results(results: dict[str, Any]) -> None:
    print(f"hsm-sim bench: median of {results['rounds']} rounds of {results['seconds_per_round']} s, "
          f"{results['in_flight']} requests in flight over TCP, {results['cpu_count']} CPUs")
    print(f"{'operation':<20} {'in process/s':>14} {'TCP/s':>10}")
    for name, rate in results["in_process"].items():
        print(f"{name:<20} {rate:>14,} {results.get('tcp', {}).get(name, 0):>10,}")
