"""The one exception type for user mistakes: the CLI prints its message and exits with code 2, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config key, missing file, out-of-range flag). The message says how."""
