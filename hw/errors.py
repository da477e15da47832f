"""Errors the machine raises to its callers (never raw Unicorn error codes)."""


class MachineError(Exception):
    """Base class of every error raised by ``hw``."""


class MachineConfigError(MachineError, ValueError):
    """An impossible configuration or argument: the message names the value."""


class MachineProbeError(MachineError):
    """This Unicorn build does not behave as the start-up probes expect."""
