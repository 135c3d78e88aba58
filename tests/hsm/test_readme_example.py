"""The example in hsm_sim/README.md runs as written (one call per operation)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

import hsm_sim


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_readme_example_runs(tmp_path: Path):
    text = (Path(hsm_sim.__file__).parent / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
