"""The one error type for problems a user can fix, and which failures the `grn` command reports as one message.

Raise `GRNUserError` (from any part of grn-lightning: configuration, setup, hooks, data, checkpoints) with a
message that names the option, file or shard and says how to fix it. The `grn` command prints it as one
`grn: error: ...` message with exit status 2 (cli.console); GRN_DEBUG=1 keeps the traceback. Library code that
calls grn-lightning directly gets an ordinary exception.

It is not a ValueError on purpose: the data readers skip records that raise ValueError/OSError, and a user
error must stop the run, never be counted as one more broken record.
"""

from __future__ import annotations

import os
import re
import traceback

from lightning.fabric.utilities.exceptions import MisconfigurationException


class GRNUserError(Exception):
    """A problem in the user's configuration, files or data, reported with its fix; never a bug of grn-lightning."""


# A missing or unreadable file is always something the user can fix, wherever it was detected.
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# Wrong values: ours when grn-lightning code raised them (the message names the option), and Lightning's own
# configuration errors (e.g. gradient clipping with manual optimisation), which name the Trainer option.
_VALUE_ERRORS = (ValueError, KeyError)
_PACKAGE_DIR = f"{os.sep}grn_lightning{os.sep}"
# torch re-raises an exception of a DataLoader worker as the same type whose message is the worker's traceback.
_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.", re.S)


def _chain(err: BaseException) -> list[BaseException]:
    """err, then what it was raised from / during (jsonargparse and Lightning wrap the original error)."""
    seen: list[BaseException] = []
    while err is not None and len(seen) < 32 and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _raised_by_us(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and _PACKAGE_DIR in frames[-1].filename


def _worker_message(err: BaseException) -> str | None:
    """The original message of a GRNUserError (or file error) re-raised from a DataLoader worker."""
    text = str(err.args[0]) if err.args else ""
    match = _WORKER_PREFIX.match(text)
    if not match or match.group(1) not in {"GRNUserError", *(t.__name__ for t in _FILE_ERRORS)}:
        return None
    last = text.rstrip().rsplit(f"\n{match.group(1)}: ", 1)
    return last[1] if len(last) == 2 else None


def user_error_message(err: BaseException) -> str | None:
    """The one-line report of `err` when it is a failure the user can fix, else None (a bug: keep the traceback).
    The outermost fitting link of the chain wins: ours wrap a library's error with the option or shard named."""
    for link in _chain(err):
        found = _worker_message(link)  # first: a re-raised worker error carries the worker's traceback
        if found is not None:
            return found
        if isinstance(link, GRNUserError) or isinstance(link, _FILE_ERRORS):
            return str(link)
        if isinstance(link, MisconfigurationException):
            return f"{link} (a Trainer option; see `grn fit --help`)"
        if isinstance(link, _VALUE_ERRORS) and _raised_by_us(link):
            return str(link.args[0]) if isinstance(link, KeyError) and link.args else str(link)
    return None
