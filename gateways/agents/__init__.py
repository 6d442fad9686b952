"""Adapters for agent CLIs: argv, per-run isolation, and parsing of their output.

Agents are external programs, like the forge and the tracker: one module per CLI.
"""
