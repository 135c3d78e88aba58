"""Transports hand raw ISO 8583 bytes to the engine and write back its answer."""

from processor.transport.tcp import TcpLimits, TcpServer

__all__ = ["TcpLimits", "TcpServer"]
