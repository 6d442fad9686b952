"""Conveyor: deliver software with AI coding agents, on NATS, crash-safe."""

__version__ = "0.1.0"
