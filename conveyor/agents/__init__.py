"""Programs Conveyor ships: the scripted demo agent and the demo repository."""
