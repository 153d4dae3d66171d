"""The one base class for errors meant for a person, and the hook that prints them as one line.

An error that derives from ``UserFacingError`` names the thing that is wrong and the fix in its
message. When nothing catches it, ``install_excepthook`` makes Python print
``ERROR: <Class>: <message>`` on one line instead of a traceback. Entry points install the hook
explicitly in ``main``; the project's virtual environment also installs it at interpreter start
(``lstm_trader.pth``, written by ``make``), so the runbook's ``python -c`` one-liners read the
same way. Importing this module changes nothing.
"""
import sys


class UserFacingError(RuntimeError):
    """An error whose message is written for the operator: what is wrong and what to do."""

    user_facing = True   # the marker the hook looks for


def is_user_facing(exc: BaseException) -> bool:
    return bool(getattr(exc, "user_facing", False))


def one_line(exc: BaseException) -> str:
    """``ERROR: <Class>: <message>``, the form every person-facing error is printed in."""
    return f"ERROR: {type(exc).__name__}: {exc}"


def _hook(exc_type, exc, tb):
    if getattr(exc_type, "user_facing", False):
        print(one_line(exc), file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print uncaught person-facing errors as one line (called by every entry point's main)."""
    sys.excepthook = _hook
