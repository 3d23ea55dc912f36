"""One error hierarchy, so callers can catch offloadd's failures as a family.

Each subclass also inherits the built-in it refines, so code that expects a
``ValueError`` or ``OSError`` keeps working.
"""

from __future__ import annotations


class OffloaddError(Exception):
    """Root of every error offloadd raises on purpose."""


class ConfigError(OffloaddError, ValueError):
    """The configuration is invalid; the message names the key path and the fix."""


class MissingDependencyError(OffloaddError, ImportError):
    """A library offloadd needs is not installed; the message says which package."""


class KernelError(OffloaddError, OSError):
    """The kernel refused or cannot do what was asked."""


class NetlinkOverrunError(KernelError):
    """A netlink socket's receive buffer overflowed (ENOBUFS): messages were lost."""


class CapabilityError(KernelError):
    """The running kernel lacks flowtable support."""


class NftError(KernelError):
    """libnftables rejected a transaction; nothing of it was applied."""


class DeviceVanishedError(NftError):
    """A device named in a transaction no longer exists (ENOENT): re-plan and retry."""


class NftOutputError(OffloaddError, ValueError):
    """libnftables printed something that is not the JSON listing it was asked for."""


class VerifyError(OffloaddError, RuntimeError):
    """The kernel state read back after an apply differs from the desired state."""
