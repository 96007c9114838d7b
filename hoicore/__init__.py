"""Infrastructure at the bottom: what every other package uses and no dataset knowledge.

The project's errors (:mod:`hoicore.errors`), reading and writing files atomically
(:mod:`hoicore.files`), the one-run-per-output lock (:mod:`hoicore.lock`), the JSON row-span
reader (:mod:`hoicore.json_rows`), logging set-up, heap tunables (:mod:`hoicore.memory`),
device selection and options declared once as dataclass fields. It imports no other package
of the project; ``hoidata`` (dataset knowledge) sits on it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hoi-distill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
