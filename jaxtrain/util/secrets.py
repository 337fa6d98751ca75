"""Masking secrets in text that is printed or written: the password of a URL.

A storage URL such as `postgresql://user:secret@host/db` names a password; every message,
console line and file that shows such a URL shows `postgresql://user:***@host/db` instead.
`mask_secrets` works on a URL alone or on any text that contains one (an error message
from a database driver quoting the URL it was given).
"""

from __future__ import annotations

import re

# scheme://user:password@ -> scheme://user:***@ (the password ends at the last '@' before the host)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@")
# password=... in a query string or a libpq keyword/value string
_PASSWORD_KEY = re.compile(r"((?:password|passwd|pwd)\s*=\s*)('[^']*'|[^&\s;]+)", re.I)


def mask_secrets(text: str) -> str:
    """`text` with every URL password (and password=... setting) replaced by ***."""
    text = _USERINFO.sub(r"\1:***@", str(text))
    return _PASSWORD_KEY.sub(r"\1***", text)
