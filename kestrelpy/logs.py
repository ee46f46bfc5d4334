"""Logger names, the TRACE level and the default logging setup."""

from __future__ import annotations

import logging
import logging.config
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def configure(level: str, *, access_log: bool, access_log_format: str = "default") -> None:
    """stderr for server messages, stdout for the access log (as uvicorn does).

    The `default` access line keeps the level in front, like every server message; any other format
    (kestrelpy/access_log.py) is written bare, so a `combined` line is what nginx writes and a `json`
    line is one JSON object, for tools that read them.
    """
    numeric = LEVELS[level]
    access_line = "%(levelname)-8s %(message)s" if access_log_format == "default" else "%(message)s"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "default": {"format": "%(levelname)-8s %(message)s"},
                "access": {"format": access_line},
            },
            "handlers": {
                "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": sys.stderr},
                "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": sys.stdout},
            },
            "loggers": {
                "kestrelpy": {"handlers": ["default"], "level": numeric, "propagate": False},
                "kestrelpy.access": {
                    "handlers": ["access"],
                    "level": numeric if access_log else logging.CRITICAL + 1,
                    "propagate": False,
                },
            },
        }
    )
