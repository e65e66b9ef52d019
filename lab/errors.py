"""Error types. Both print as one line at the CLI; tracebacks are for bugs only."""


class LabError(Exception):
    """A problem the user can fix: bad input, missing tool. Printed as one line."""


class InfraError(LabError):
    """The lab or the host failed, not the input."""
