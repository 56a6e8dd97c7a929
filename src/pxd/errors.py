"""User-facing errors: the CLI prints them as one line and exits 2."""


class PxdError(Exception):
    """Bad input or configuration that the user can fix; never a bug."""


class Interrupted(BaseException):  # noqa: N818
    """Ctrl-C (SIGINT): a BaseException so that no `except Exception` swallows it."""
