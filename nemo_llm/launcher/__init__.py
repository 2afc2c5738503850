"""Starting the processes of a run."""

from nemo_llm.launcher.local import LaunchError, launch_local

__all__ = ["LaunchError", "launch_local"]
