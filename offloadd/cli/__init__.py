"""The two command lines: `offloadd` (run.py) and `offloadctl` (ctl.py)."""
