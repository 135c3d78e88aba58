"""CPU accounting of load runs: the kernel's figures for a process tree and a database's backends, and the decode unit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg

from processor.iso8583 import encode
from terminal_sim.cpu import CpuFigures, DecodeUnit, PostgresCpu, ProcessCpu, descendants

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(5)"


def test_a_childs_cpu_counts_for_its_parent():
    meter = ProcessCpu([os.getpid()])
    meter.start()
    child = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            meter.sample()
            if meter.stop() >= 0.3:
                break
            time.sleep(0.05)
        assert child.pid in descendants(os.getpid())
        assert 0.29 <= meter.stop() < 3
    finally:
        child.kill()
        child.wait()


async def test_the_decode_unit_is_measured_in_a_process_of_its_own():
    raw = encode({"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001000", "11": "000001", "41": "SHOP0001"})
    unit = DecodeUnit(raw, 1.0)
    await unit.start()
    result = await unit.result()
    assert 0.5 < result["decode_us"] < 5000 and result["bursts"] >= 2


async def test_a_message_pyiso8583_cannot_decode_fails_the_unit_with_one_line():
    unit = DecodeUnit(b"02", 0.5)
    await unit.start()
    try:
        await unit.result()
    except ValueError as exc:
        assert "decode-unit process failed" in str(exc)
    else:
        raise AssertionError("a broken message gave a decode unit")


async def test_postgres_backends_of_the_database_are_counted(pg_url):
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    busy = await asyncpg.connect(dsn)
    try:
        meter = PostgresCpu(pg_url)
        await meter.start()
        assert meter.cpu.roots  # the busy connection's backend
        await busy.execute("select count(*) from generate_series(1, 3000000)")
        spent = await meter.stop()
        assert spent > 0.05
    finally:
        await busy.close()


def test_figures_per_answer_and_the_ratio():
    figures = CpuFigures(answers=1000, engine_s=0.7, generator_s=0.05, decode_unit_us=100.0, postgres_s=0.2).as_json()
    assert figures["engine_us_per_auth"] == 700.0 and figures["engine_decode_ratio"] == 7.0
    assert figures["generator_us_per_request"] == 50.0 and figures["postgres_us_per_auth"] == 200.0
    assert len(figures["load_average"]) == 3
