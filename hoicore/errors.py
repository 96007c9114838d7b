"""The project's own errors: faults a user can fix, as opposed to bugs.

Every error the project raises for bad input (a malformed file, a missing image, boxes out
of bounds), a mismatch (a cache made with another model, a checkpoint of another config)
or a run that cannot go on (an output held by another run, a full disk) derives from
:class:`HoiError`, and its message names the file, the item and the fix. The command line
prints exactly these as one line (with ``-v``, with their traceback); anything else is
unexpected and keeps its traceback, so a shape bug or a CUDA failure hours into a run is
never reduced to a cryptic line.

Each subclass also derives from the builtin it refines (``ValueError`` mostly), so callers
that catch those keep working.
"""


class HoiError(Exception):
    """A fault the user can fix; the message says what is wrong, where, and what to do."""


class InputError(HoiError, ValueError):
    """An input, option or file that cannot be used as given (where no more specific error fits)."""


class RunError(HoiError, RuntimeError):
    """A run that stopped for a reason outside the code (a helper process died, ...); rerunning resumes."""
