"""Transports hand raw ISO 8583 bytes to the engine and write back its answer: TCP, and MQTT through a broker."""

from processor.transport.mqtt import MqttEndpoint, MqttLimits, MqttServer, MqttUnavailable
from processor.transport.tcp import TcpLimits, TcpServer

__all__ = ["MqttEndpoint", "MqttLimits", "MqttServer", "MqttUnavailable", "TcpLimits", "TcpServer"]
