"""Numbers that come from URLs and query strings: row ids and page numbers.

Python integers are unbounded, the database's are 64-bit: a number beyond that range must
be "no such row" (404) or a named bad argument (400), never a database error (500).
Only ASCII digits count as digits ("²".isdigit() is true, but int("²") fails).
"""

from typing import Optional

from werkzeug.routing import IntegerConverter

MAX_ROW_ID = 2**63 - 1  # SQLite INTEGER and PostgreSQL BIGINT


def ascii_int(text: str) -> Optional[int]:
    """The value of a string of ASCII digits, or None for anything else."""
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_row_id(text: str) -> Optional[int]:
    """A row id 1..MAX_ROW_ID from text, or None when it cannot be one."""
    value = ascii_int(text)
    return value if value is not None and 1 <= value <= MAX_ROW_ID else None


class RowIdConverter(IntegerConverter):
    """URL converter `<id:name>`: matches row ids 1..MAX_ROW_ID only, so a larger number
    is an unknown URL (404) instead of an overflow in the database driver."""

    def __init__(self, url_map, *args, **kwargs):
        super().__init__(url_map, min=1, max=MAX_ROW_ID)
