"""`Hsm` and `HsmClient` offer the same typed host commands, those `HsmApi` declares."""

from __future__ import annotations

import inspect

import pytest

from hsm_sim import COMMANDS, Hsm, HsmApi, HsmClient


def _signature(cls: type, name: str) -> inspect.Signature:
    return inspect.signature(getattr(cls, name))


@pytest.mark.parametrize("name", sorted(COMMANDS.values()))
def test_every_command_has_one_signature_everywhere(name):
    declared = _signature(HsmApi, name)
    assert _signature(Hsm, name) == declared, f"Hsm.{name}"
    assert _signature(HsmClient, name) == declared, f"HsmClient.{name}"
    assert inspect.iscoroutinefunction(getattr(HsmClient, name))
    assert inspect.iscoroutinefunction(getattr(Hsm, name))


def test_the_interface_declares_nothing_the_hsm_does_not_serve():
    declared = {name for name, value in vars(HsmApi).items() if inspect.isfunction(value) and not name.startswith("_")}
    assert declared == set(COMMANDS.values()) | {"close"}
    assert "close" in vars(Hsm) and "close" in vars(HsmClient)
