"""`terminal-sim load` as an operator runs it: exit code, live line, and the report against a real engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from engine_helpers import build_issuer
from processor.config import Settings
from processor.server import running_engine
from terminal_sim.load import EXPECTED_CODES, LoadResult, parse_expect
from terminal_sim.load_report import LoadProgress, print_summary

DOCUMENTED_KEYS = {"tps", "p50_ms", "p95_ms", "p99_ms", "codes", "by_kind"}


@dataclasses.dataclass
class LoadTarget:
    port: int
    terminals: Path
    known_cards: Path
    unknown_cards: Path


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[LoadTarget]:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, _, terminals = await build_issuer(settings)
    shop = terminals["shop"]
    terminals_file = tmp_path / "terminals.json"
    terminals_file.write_text(json.dumps([{"terminal_id": shop.terminal_id, "merchant_id": shop.merchant_id, "mcc": shop.mcc,
                                           "ipek": shop.ipek, "initial_ksn": shop.initial_ksn, "chip_capable": False}]))
    known = tmp_path / "cards.json"
    known.write_text(json.dumps([dataclasses.asdict(cards[name]) for name in ("ada", "grace", "ivan")]))
    unknown = tmp_path / "unknown.json"
    stranger = dataclasses.replace(cards["ada"], pan="4000001234567899", track2="4000001234567899=30121011234567890000")
    unknown.write_text(json.dumps([dataclasses.asdict(stranger)]))
    async with running_engine(settings) as running:
        yield LoadTarget(running.port, terminals_file, known, unknown)


async def _load(target: LoadTarget, cards: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "terminal_sim.cli", "load", "--tcp", f"127.0.0.1:{target.port}", "--cards", str(cards),
        "--terminals", str(target.terminals), "--connections", "2", "--seconds", "1.5", "--json", *extra,
        env=dict(os.environ, PYTHONWARNINGS="ignore"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out), err.decode()


async def test_answers_the_mix_does_not_expect_fail_the_run(target):
    code, summary, err = await _load(target, target.unknown_cards, "--mix", "purchase=1")
    assert code == 1
    assert summary["codes"] == {"14": summary["count"]} and summary["count"] > 10
    assert summary["unexpected"] == summary["declined"] == summary["count"] and summary["ok"] is False
    assert summary["by_kind"]["purchase"]["expected"] == ["00", "51"]
    assert "answers not expected for their kind: purchase 14=" in err
    # The live line (standard error is no terminal here: one line a second) shows declines and failures.
    live = [line for line in err.splitlines() if line.startswith("[")]
    assert live and "declined" in live[0] and "(14=" in live[0] and "unexpected" in live[0]


async def test_a_clean_run_exits_0_and_keeps_the_documented_keys(target):
    code, summary, err = await _load(target, target.known_cards, "--mix", "purchase=6,balance=2,refund=2", "--quiet")
    assert code == 0, err
    assert DOCUMENTED_KEYS <= set(summary)
    assert summary["ok"] is True and summary["failures"] == [] and err == ""
    # 61: the load's refunds name no purchase, and the issuer bounds those per merchant and day.
    assert set(summary["codes"]) <= {"00", "51", "61"} and summary["approved"] > 10
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["p99_9_ms"] <= summary["max_ms"]
    assert sum(b["count"] for b in summary["latency_histogram_ms"]) == summary["count"]
    decoded = HdrHistogram.decode(summary["latency_hdr"])
    assert decoded.get_total_count() == summary["count"]
    assert set(summary["by_kind"]) == {"purchase", "balance", "refund"}


async def test_expectations_can_be_narrowed_or_widened(target):
    code, summary, _ = await _load(target, target.unknown_cards, "--mix", "purchase=1", "--expect", "purchase=14", "--quiet")
    assert (code, summary["ok"], summary["unexpected"]) == (0, True, 0)


@pytest.mark.parametrize("expect", ["refund=00,5", "bogus=00", "purchase="])
async def test_a_bad_expectation_is_one_line_and_exit_2(target, expect):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "terminal_sim.cli", "load", "--tcp", f"127.0.0.1:{target.port}", "--cards",
        str(target.known_cards), "--terminals", str(target.terminals), "--expect", expect,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2 and out == b""
    assert len(err.decode().strip().splitlines()) == 1 and "--expect" in err.decode() and "Traceback" not in err.decode()


# ---------------------------------------------------------------- the report itself


def test_every_kind_of_the_mix_has_expected_codes():
    from terminal_sim.load import KINDS

    assert set(KINDS) | {"completion"} == set(EXPECTED_CODES)
    assert parse_expect(["purchase=00"])["purchase"] == {"00"} and parse_expect(None) == EXPECTED_CODES


def test_percentiles_and_histogram_from_known_latencies(capsys):
    result = LoadResult(seconds=10.0, connections=1)
    # 1,001 answers: 990 at 2 ms, a refund at 5 ms, 9 at 40 ms, 1 at 900 ms. p99 is the 991st (5 ms), p99.9
    # the 1,000th (40 ms), p50 2 ms and the maximum 900 ms.
    for latency, count in ((2.0, 990), (40.0, 9), (900.0, 1)):
        for _ in range(count):
            result.record("purchase", "00", latency)
    result.record("refund", "14", 5.0)
    summary = result.summary()
    assert summary["count"] == 1001 and summary["tps"] == 100.1
    assert summary["p50_ms"] == pytest.approx(2.0, rel=1e-3)
    assert summary["p99_ms"] == pytest.approx(5.0, rel=1e-3)
    assert summary["p99_9_ms"] == pytest.approx(40.0, rel=1e-3)
    assert summary["max_ms"] == pytest.approx(900.0, rel=1e-3)
    assert summary["latency_histogram_ms"] == [
        {"le_ms": 2.0, "count": 990}, {"le_ms": 5.0, "count": 1}, {"le_ms": 10.0, "count": 0}, {"le_ms": 20.0, "count": 0},
        {"le_ms": 50.0, "count": 9}, {"le_ms": 100.0, "count": 0}, {"le_ms": 200.0, "count": 0}, {"le_ms": 500.0, "count": 0},
        {"le_ms": 1000.0, "count": 1},
    ]
    assert summary["declined_codes"] == {"14": 1} and summary["unexpected"] == 1
    assert summary["failures"] == ["1 answers not expected for their kind: refund 14=1 (expected 00/61)"]
    print_summary(summary)
    text = capsys.readouterr().out
    assert "99.9%" in text and "<= 1000 ms" in text and "FAILED: 1 answers not expected" in text


def test_progress_counts_the_last_second_only():
    result = LoadResult(seconds=2.0, connections=1)
    for _ in range(5):
        result.record("purchase", "00", 1.0)
    result.record("purchase", "51", 30.0)
    first = result.progress(1.0)
    result.record("purchase", "00", 3.0)
    second = result.progress(2.0)
    assert (first.answered, first.answered_last_s, first.approved, dict(first.declined)) == (6, 6, 5, {"51": 1})
    assert (second.answered, second.answered_last_s, second.p99_last_s_ms) == (7, 1, pytest.approx(3.0, rel=1e-3))
    assert isinstance(second, LoadProgress) and "declined 1 (51=1)" in second.text().plain
    assert result.failures() == []


async def test_the_engines_cpu_per_answer_against_the_decode_unit(target):
    # The engine runs in this process: its CPU per answer is this process's.
    code, summary, err = await _load(target, target.known_cards, "--mix", "purchase=1", "--quiet", "--engine-pid", str(os.getpid()))
    assert code == 0, err
    cpu = summary["cpu"]
    assert cpu["engine_us_per_auth"] > 0 and cpu["decode_unit_us"] > 0 and cpu["generator_us_per_request"] > 0
    assert abs(cpu["engine_decode_ratio"] - cpu["engine_us_per_auth"] / cpu["decode_unit_us"]) < 0.05
    assert "postgres_us_per_auth" not in cpu


async def test_template_requests_are_answered_and_balance_like_full_ones(target):
    code, summary, err = await _load(target, target.known_cards, "--mix", "purchase=3,manual=1,preauth=1,balance=1,refund=1",
                                     "--quiet", "--templates", "--close-batches")
    assert code == 0, err
    assert summary["ok"] and summary["approved"] > 10
    assert {"purchase", "manual", "preauth", "completion", "balance", "refund"} <= set(summary["by_kind"])
    assert summary["batches"]["in_balance"] == summary["batches"]["closed"] >= 1
