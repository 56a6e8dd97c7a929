"""User-facing errors: the CLI prints them as one line and exits 2."""


class PxdError(Exception):
    """Bad input or configuration that the user can fix; never a bug."""


class Interrupted(BaseException):  # noqa: N818
    """Ctrl-C (SIGINT): a BaseException so that no `except Exception` swallows it."""


# Ctrl-C before a command has loaded JAX is held until it has (the CLI arms it then): an
# exception raised inside an extension module's initialisation (a C++ callback into Python)
# aborted the process, or was swallowed and the command ran on.
_SIGINT = {"armed": False, "pending": False}


def on_sigint(signum, frame) -> None:
    """The CLI's SIGINT handler: Interrupted once armed, else remembered."""
    _SIGINT["pending"] = True  # kept: a raise inside a gc callback is printed and lost
    if _SIGINT["armed"]:
        raise Interrupted()


def raise_pending() -> None:
    """Raise a Ctrl-C whose Interrupted was lost (progress updates call this)."""
    if _SIGINT["armed"] and _SIGINT["pending"]:
        _SIGINT["pending"] = False
        raise Interrupted()


def arm_interrupts(armed: bool = True) -> None:
    """Arm (a held Ctrl-C is raised now) or, with False, disarm and forget one."""
    _SIGINT["armed"] = armed
    pending, _SIGINT["pending"] = _SIGINT["pending"], False
    if armed and pending:
        raise Interrupted()


def interrupt_pending() -> bool:
    return _SIGINT["pending"]
