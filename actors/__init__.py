"""Actors: each owns its state and nothing else."""
