"""hsm_sim stands alone: it imports nothing of the processor or the terminals, and has no import cycle."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_architecture import cycles, import_graph  # noqa: E402


def test_hsm_sim_has_no_import_cycle_and_no_other_party_inside():
    graph = import_graph(["hsm_sim", "processor", "terminal_sim"])
    hsm_modules = {name: deps for name, deps in graph.items() if name.startswith("hsm_sim")}
    assert not [dep for deps in hsm_modules.values() for dep in deps if not dep.startswith("hsm_sim")]
    assert cycles(hsm_modules) == []
