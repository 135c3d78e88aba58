"""An issuer with cards and terminals, an engine on a free loopback port (the engine tests' fixture)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import issuer, issuer_copies  # noqa: E402

__all__ = ["issuer", "issuer_copies"]
