"""`hsm-sim bench` runs end to end: in process, over plain TCP and over mutual TLS, every request verified."""

from __future__ import annotations

import pytest

from hsm_sim.bench import NETWORK_OPERATIONS, print_results, run_bench


@pytest.mark.slow
async def test_bench_measures_every_channel(capsys):
    results = await run_bench(seconds=0.05, rounds=1, in_flight=16)
    assert set(results["tcp"]) == set(results["tls"]) == set(NETWORK_OPERATIONS)
    assert all(rate > 0 for channel in ("in_process", "tcp", "tls") for rate in results[channel].values())
    print_results(results)
    assert "cvv_verify" in capsys.readouterr().out
