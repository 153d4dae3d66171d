"""Named crash points for fault-injection tests of crash safety.

``failpoint("after_place_order")`` ends the process on the spot (``os._exit(99)``: no cleanup,
no flushing, like ``kill -9``) when the environment variable ``TRADING_FAILPOINT`` names it.
Unset (always, outside tests), it does nothing.
"""
import os

import constants as C

ENV = C.ENV_FAILPOINT
EXIT_CODE = 99


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
