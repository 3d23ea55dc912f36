"""The client side of the control socket (offloadctl, the lab's tests): one
request, one reply (the protocol: offloadd.service.control).

Apart from the server so that asking costs no asyncio import: offloadctl
status starts in a fraction of the time.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from offloadd.core.errors import OffloaddError

PROTOCOL_VERSION = 1


class ControlError(OffloaddError, OSError):
    """The control socket could not be set up or reached."""


class NotRunningError(ControlError):
    """Nothing listens on the control socket: offloadd is not running (there)."""


def request(path: Path, command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Client side (offloadctl): sends one request, returns its result or raises."""
    body = json.dumps({"version": PROTOCOL_VERSION, "command": command, **args}) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(body.encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise NotRunningError(f"offloadd is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise NotRunningError(f"offloadd is not running (nothing listens on {path})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: run as root or as a member of "
                           "the group set in control.group") from None
    except OSError as e:
        raise ControlError(f"control socket {path}: {e.strerror or e}") from e
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"offloadd sent an unreadable reply on {path}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")
