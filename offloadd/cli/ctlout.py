"""offloadctl's exit codes and output, shared by its light commands (ctl) and
those that read the kernel (ctlkernel)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
# For --help and offloadctl(8), which is generated from it.
EXIT_STATUS = (
    (EXIT_OK, "ok"),
    (EXIT_FAILED, "the operation failed (reload refused, kernel error)"),
    (EXIT_USAGE, "bad arguments or config"),
    (EXIT_DOWN, "the daemon is not running (status then shows what the kernel holds, "
                "given a config)"),
)


def fail(code: int, msg: str) -> int:
    print(f"offloadctl: {msg}", file=sys.stderr)
    return code


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(human)
