"""The training run's state: checkpoint files and resume, run files, flags and schedule."""
