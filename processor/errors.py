"""Errors an operator sees; each message says what is wrong and what to do."""


class ProcessorError(Exception):
    """Base class of the processor's own errors."""


class ConfigurationError(ProcessorError):
    """The processor is not set up the way the command needs."""


class NotFound(ProcessorError):
    """A referenced object (cardholder, account, card, terminal) does not exist."""


class InvalidRequest(ProcessorError):
    """An operator request that cannot be carried out as asked."""
