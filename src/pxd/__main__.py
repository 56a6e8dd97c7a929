"""`python -m pxd` and the `pxd` script. Ctrl-C is caught from here on: pressed while typer,
rich or JAX are still importing, it is held (Python's own KeyboardInterrupt there gave a
traceback, and a library's bare `except:` around an import could swallow it, so the command
ran on and exited 0)."""

import signal

from pxd.errors import on_sigint


def main() -> None:
    try:
        signal.signal(signal.SIGINT, on_sigint)  # not armed yet: only remembered
    except ValueError:  # not the main thread
        pass
    from pxd.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
