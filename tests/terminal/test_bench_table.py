"""scripts/bench's comparison: medians of the passing runs of each side, failed runs left out and counted."""

from __future__ import annotations

import json
from pathlib import Path

from terminal_sim.bench_table import compare, line


def _run(folder: Path, name: str, tps: float, ratio: float, ok: bool = True) -> None:
    cpu = {"engine_us_per_auth": ratio * 50, "decode_unit_us": 50.0, "engine_decode_ratio": ratio, "generator_us_per_request": 40.0}
    (folder / name).write_text(json.dumps({"tps": tps, "p99_ms": 9.0, "ok": ok, "failures": [] if ok else ["x"], "cpu": cpu}))


def test_medians_of_the_passing_runs(tmp_path):
    _run(tmp_path, "sqlite-baseline-1.json", 100, 14)
    _run(tmp_path, "sqlite-baseline-2.json", 120, 12)
    _run(tmp_path, "sqlite-baseline-3.json", 5, 90, ok=False)
    _run(tmp_path, "sqlite-this-1.json", 200, 7)
    _run(tmp_path, "sqlite-this-2.json", 220, 6)
    _run(tmp_path, "sqlite-this-3.json", 210, 8)
    table = compare(tmp_path)["sqlite"]
    assert table["baseline"]["engine_decode_ratio"] == 13.0 and table["this"]["engine_decode_ratio"] == 7.0
    assert table["runs"] == {"baseline": 2, "this": 3} and table["failed_runs_left_out"] == 1
    assert "ratio 7" in line("sqlite-this-1", json.loads((tmp_path / "sqlite-this-1.json").read_text()))
