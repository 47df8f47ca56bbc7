"""The errors of the validation layer: :class:`InvalidInput` (an option, input file or output place that cannot work)
and :func:`describe_os_error`, the one line of a failed file operation."""

from __future__ import annotations

import errno

from lit_score.atomic import FULL, DiskFullError


class InvalidInput(ValueError):
    """An option, an input file or an output place that cannot work: one line naming it and the fix."""


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: what, where and what to do (our own errors pass through)."""
    if isinstance(err, DiskFullError) or not err.errno:
        return " ".join(str(err).split())
    where = err.filename if err.filename is not None else (
        "the output (--output; for fit the logger's save_dir or --trainer.default_root_dir)")
    what = err.strerror or str(err)
    if err.errno in FULL:
        return (f"no space left on the disk holding {where}: free space there or write elsewhere; nothing was"
                " half-written")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write to {where} ({what.lower()}): pass a writable place (--output; for fit"
                " --trainer.logger.init_args.save_dir or --trainer.default_root_dir)")
    if err.errno == errno.ENOENT:
        return f"{where} does not exist ({what.lower()}): pass an existing path"
    return f"{what} ({where}): check the path and its permissions"
