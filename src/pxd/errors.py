"""User-facing errors and Ctrl-C: a PxdError is one line and exit 2, Ctrl-C `pxd:
interrupted` and exit 130, and `exit_line` says what every other exception prints."""


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


def arm_interrupts(armed: bool = True, *, forget: bool = True) -> None:
    """Arm (a held Ctrl-C is raised now) or, with False, disarm and forget one (or keep it
    pending with forget=False)."""
    _SIGINT["armed"] = armed
    if not armed:
        if forget:
            _SIGINT["pending"] = False
        return
    if _SIGINT["pending"]:
        _SIGINT["pending"] = False
        raise Interrupted()


def interrupt_pending() -> bool:
    return _SIGINT["pending"]


def hold_unraisable_interrupts(default):
    """A `sys.unraisablehook` for the CLI: a Ctrl-C raised inside a __del__, weakref or gc
    callback (Python prints those as "Exception ignored in ...", a traceback on stderr) is
    kept pending silently and raised at the next progress update; anything else goes to
    `default`."""
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            _SIGINT["pending"] = True
            return
        default(unraisable)

    return hook


def _usage_message(e: BaseException) -> str:
    """One line from a typer/click usage error, whichever version raised it."""
    fmt = getattr(e, "format_message", None)
    msg = fmt() if callable(fmt) else str(e)
    msg = " ".join(str(msg).split()) or "bad usage"
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) if ctx is not None else None
    return f"{msg} (see '{path or 'pxd'} --help')"


def exit_line(e: Exception) -> tuple[str | None, int, bool]:
    """The CLI's answer to an exception that is not a PxdError: (line for stderr or None,
    exit code, whether PXD_DEBUG=1 should show its traceback). typer/click's exceptions are
    told apart by class name, so vendored copies are recognised too."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:  # bare `pxd`: its help is what was asked for
        fmt = getattr(e, "format_message", None)
        return (fmt() if callable(fmt) else str(e)), 2, False
    if "UsageError" in names:
        return f"pxd: error: {_usage_message(e)}", 2, False
    if "Abort" in names:
        return "pxd: interrupted", 130, False
    if "Exit" in names:
        return None, int(getattr(e, "exit_code", 0) or 0), False
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return f"pxd: error: {e.strerror or e}{where}", 1, True
    if "ClickException" in names:
        return f"pxd: error: {_usage_message(e)}", int(getattr(e, "exit_code", 1) or 1), False
    return (f"pxd: error: {type(e).__name__}: {' '.join(str(e).split())} "
            "(this is a bug; set PXD_DEBUG=1 for a traceback)"), 1, True
