"""The client side of the control socket (offloadctl, the lab's tests): one
request, one reply (the protocol: offloadd.service.control).

Apart from the server so that asking costs no asyncio import: offloadctl
status starts in a fraction of the time.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from offloadd.core.errors import OffloaddError

PROTOCOL_VERSION = 1


class ControlError(OffloaddError, OSError):
    """The control socket could not be set up or reached."""


class NotRunningError(ControlError):
    """Nothing listens on the control socket: offloadd is not running (there)."""


# A connection offloadd cut (it was at its connection limit, busy with a
# flood of slow clients: offloadd.service.connections) is asked again after
# these pauses; a cut is no sign that offloadd is down.
RETRY_CUT_S = (0.2, 0.5, 1.0, 2.0)


# How long offloadctl waits for an answer. offloadd answers on its loop, after
# the transaction under way: a re-validation's replacement took 4 s and an
# answer 10+ s on a slow day's emulated VM; a real gateway is faster, but an
# operator is better served by a late answer than a false "timed out".
TIMEOUT_S = 30.0


class _CutError(Exception):
    """offloadd closed the connection before its whole reply."""


def request(path: Path, command: str, timeout: float = TIMEOUT_S, **args: Any) -> Any:
    """Client side (offloadctl): sends one request, returns its result or raises."""
    body = (json.dumps({"version": PROTOCOL_VERSION, "command": command, **args})
            + "\n").encode()
    for pause in (*RETRY_CUT_S, None):
        try:
            raw = _exchange(path, body, timeout)
            break
        except _CutError as e:
            if pause is None:
                raise ControlError(f"control socket {path}: offloadd cut the connection "
                                   f"{len(RETRY_CUT_S) + 1} times ({e}): it is at its "
                                   "connection limit; try again") from None
            time.sleep(pause)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlError(f"offloadd sent an unreadable reply on {path}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")


def _exchange(path: Path, body: bytes, timeout: float) -> bytes:
    """One connection: the request out, the whole reply in."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(body)
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
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
        raise _CutError(e.strerror or str(e)) from None
    except BlockingIOError:
        # EAGAIN from connect(): the listen backlog is full (offloadd is up
        # and busy, e.g. with a flood of clients); asked again like a cut.
        raise _CutError("its connection backlog was full") from None
    except OSError as e:
        raise ControlError(f"control socket {path}: {e.strerror or e}") from e
    if not chunks:
        raise _CutError("closed without a reply")
    return b"".join(chunks)
