"""Subject names: what a person may be called (they appear in URLs, payloads and the page)."""

from __future__ import annotations

import re
import unicodedata

from app.errors import InvalidRequest

MAX_NAME = 128
# Letters and digits of any script, then also spaces and . ' - _ ( ) inside; no slash, no control characters.
NAME_PATTERN = r"^[^\W_][\w .'()\-]*$"
_NAME = re.compile(NAME_PATTERN, re.UNICODE)


def subject_name(value: str, *, what: str = "subject name") -> str:
    """The name in NFC form with its outer spaces removed; InvalidRequest naming the problem otherwise."""
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise InvalidRequest(f"the {what} is empty")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"the {what} is {len(name)} characters long, over the limit of {MAX_NAME}")
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"the {what} {name!r} has characters a name may not have: it starts with a letter or digit and holds "
            "only letters, digits, spaces and . ' - _ ( )"
        )
    return name
