"""Logging set-up, done once per CLI call before any model is created.

open_clip logs through the root logger, and the first warning anyone emits configures
logging implicitly; configuring it here first keeps one format for all messages. Its
INFO chatter (one line per loading step) is shown only with -v.
"""

import logging
import os

from hoicore.logs import basic_setup


class _QuietOpenClip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    basic_setup(level)
    if verbose == 0:
        for h in logging.getLogger().handlers:
            h.addFilter(_QuietOpenClip())
    # Never reach for a model hub unless the user asked for it explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
