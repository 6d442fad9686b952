"""`python -m conveyor.demo_agent`: the agent command existing configs name.

The agent itself lives in `conveyor.agents.demo_agent`; this module only runs it,
so the foundation package imports nothing above it.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("conveyor.agents.demo_agent", run_name="__main__", alter_sys=True)
