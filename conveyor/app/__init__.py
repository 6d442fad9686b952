"""Composition root: the CLI, the client, the status service and the process wiring."""
