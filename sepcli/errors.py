"""The project's exception. Library code raises it for any bad input; the CLI
turns it into a one-line message and a non-zero exit, never a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SepError(Exception):
    """A user-facing error: bad input, missing file, unknown model, ..."""


def check_keys(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise one :class:`SepError` naming every key of ``given`` not in ``valid``,
    each with its closest valid spelling, then the valid keys: a typo in a recipe,
    a ``--set`` or a config must not pass silently.

    ``what`` names the kind of key, e.g. ``"training setting"``: the message
    reads ``unknown training setting(s): batch_sze (did you mean batch_size?); valid: ...``.
    """
    names = sorted(valid)
    unknown = sorted(set(given) - set(names))
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise SepError(f"unknown {what}(s): {', '.join(named)}; valid: {', '.join(names)}")
