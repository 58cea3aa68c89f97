"""The base of every error a user can act on.

Its message names the file, the entry or the YAML key, and the reason. The command-line tools
print it as one line (``error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state the user can fix (a missing file, a malformed config, a full disk)."""


class StoreError(UserError):
    """A store that cannot be used as it is; the message says what to do."""


class DiskFullError(StoreError):
    """No space left (or a file size limit) while writing under a stores folder."""


class MissingSegmentsError(StoreError):
    """A view whose segments were deleted: the message names the files whose rows are gone."""
