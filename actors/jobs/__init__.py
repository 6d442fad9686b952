"""What one launch does: worktree steps, agent run, merge gate, deploy and finalizer, leases.

Every function here takes an explicit `JobContext`, never the Launcher actor.
"""
