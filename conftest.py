"""Running from the repository without installing: load the hwtests plugin by hand.

When the package is installed, pytest loads the plugin through its `pytest11`
entry point and this file adds nothing.
"""

from importlib.metadata import entry_points

if not entry_points(group="pytest11", name="hwtests"):
    pytest_plugins = ["hwtests.plugin"]
