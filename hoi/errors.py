"""The command line's one error policy (every ``hoi`` group uses :class:`HoiGroup`).

A fault the user can fix (:class:`hoicore.errors.HoiError`, or an OSError about a path, a
permission or free space) is printed as one line naming the file, the item and the fix;
anything else is unexpected and keeps its traceback; with ``-v`` everything does.
"""

from __future__ import annotations

import errno

import click

from hoi.command import HoiCommand

# errno values of OSErrors a user fixes (a path, a permission, a full disk): one line too
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR, errno.EDQUOT, errno.ENAMETOOLONG}


def user_fixable(e: BaseException) -> bool:
    """The project's own errors, and OSErrors about a path, permission or space."""
    from hoicore.errors import HoiError

    return isinstance(e, HoiError) or (isinstance(e, OSError) and e.errno in _USER_ERRNOS)


class HoiGroup(click.Group):
    """The ``hoi`` group: one error policy for every command. A fault the user can fix
    (:class:`hoicore.errors.HoiError`, a missing file, a full disk) is one line naming file,
    item and fix; anything else is a bug and keeps its traceback; with ``-v`` everything
    shows its traceback."""

    command_class = HoiCommand  # -v / -q after the command name, old spellings of renamed options

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if not user_fixable(e) or ctx.meta.get("hoi.verbose"):
                raise
            raise click.ClickException(message(e, ctx.invoked_subcommand)) from None


def message(e: BaseException, command: str | None) -> str:
    """The one line for a fault the user fixes; a full disk says what to do about it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return (f"the disk is full{where} ({e.strerror}) during hoi {command or ''}: no output was marked "
                "complete; free space and run the same command again (teacher-cache resumes at the shards not "
                "done, train with --resume at its last epoch; the others start over)")
    return str(e)
