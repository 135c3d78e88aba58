"""The engine's log lines: the standard format, its time stamp formatted once a second."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.logs import FORMAT, SecondFormatter


@settings(max_examples=200)
@given(st.lists(st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False), min_size=1, max_size=20))
def test_lines_are_the_standard_formatters(times):
    ours, standard = SecondFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in sorted(times) + times:
        record = logging.LogRecord("processor.auth", logging.INFO, __file__, 1, "rc=%s reason=%r", ("00", "approved"), None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000)
        assert ours.format(record) == standard.format(record)
