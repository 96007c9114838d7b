"""The one log format of every process the project starts (the CLI's and its workers')."""

import logging

FORMAT, DATE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"


def basic_setup(level: int) -> None:
    """Root logging at ``level`` in the project's format (a worker process's set-up)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATE_FORMAT, force=True)
