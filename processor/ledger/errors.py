"""How the store says no: every message names the object and the reason."""

from __future__ import annotations

from processor.errors import NotFound, ProcessorError


class StoreError(ProcessorError):
    """The store refused or could not carry out a request; the message says which object and why."""


class StoreNotFound(StoreError, NotFound):
    """A referenced cardholder, account, card, merchant or terminal does not exist."""


class StoreBusy(StoreError):
    """The write queue stayed full (or the commit did not come) within the timeout: shed load and retry."""


class StoreClosed(StoreError):
    """The store was closed before the operation was committed; it may or may not have been applied."""
