"""Template requests are byte for byte what the full terminal sends for the same values."""

from __future__ import annotations

import copy

import pytest

from processor.iso8583 import decode
from processor.iso8583.mac import signed_parts
from terminal_sim.pos import CardData, PosTerminal
from terminal_sim.templates import KIND_SHAPE, TEMPLATE_KINDS, RequestTemplates

CARDS = [
    CardData(pan="4761739001010010", expiry="3012", track2="4761739001010010=30121011234567890000", cvv2="123"),
    CardData(pan="4761739001010028", expiry="2911", track2="4761739001010028=29111019876543210000", cvv2="456"),
    CardData(pan="476173900101003", expiry="2805", track2="476173900101003=28051011111111110000", cvv2="789"),
]


def _terminal() -> PosTerminal:
    return PosTerminal("T0000001", "M00000000000001", ipek="6AC292FAA1315B4D858AB3A3D7D5933A",
                       initial_ksn="FFFF9876543210E00000", chip_capable=False)


@pytest.mark.parametrize("kind", sorted(TEMPLATE_KINDS))
def test_a_template_request_is_the_full_paths_bytes(kind):
    terminal = _terminal()
    templates = RequestTemplates()
    for round_ in range(3):
        for card in CARDS:
            amount = 100 + 37 * round_
            reference = copy.deepcopy(terminal)
            payload, kept, ksn = templates.build(terminal, kind, card, amount)
            sent = decode(payload)
            # As Workload.next builds each kind: a keyed request carries the card's CVV2.
            extra = {"cvv2": card.cvv2} if kind == "manual" else {}
            fields = reference.card_request(card, amount if kind != "balance" else 0, **KIND_SHAPE[kind], **extra)
            for de in ("7", "11", "12", "13", "37"):
                fields[de] = sent[de]
            fields["53"] = ksn
            expected, _ = reference.sign(fields)
            assert payload == expected
            assert signed_parts(payload, sent) is not None
            assert kept["11"] == sent["11"] and kept["4"] == sent["4"] and kept["t"] == sent["t"]


def test_each_request_moves_the_stan_and_the_dukpt_counter():
    terminal = _terminal()
    templates = RequestTemplates()
    seen = set()
    for _ in range(20):
        payload, kept, ksn = templates.build(terminal, "purchase", CARDS[0], 500)
        fields = decode(payload)
        seen.add((fields["11"], fields["53"]))
        assert fields["53"] == ksn and terminal.owns(ksn)
    assert len(seen) == 20
