"""Errors shared by every command-line entry point."""


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing file, busy port). Printed as one line, exit 2."""

    exit_code = 2


class ServiceError(Exception):
    """A required service (broker, ledger) is unreachable or misbehaving. Printed as one line, exit 3."""

    exit_code = 3
