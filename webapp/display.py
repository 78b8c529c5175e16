"""How dates and model versions read on the clinician's pages.

Times are stored in UTC; pages show them in the clinic's time zone (``KOA_TIME_ZONE``, an
IANA name such as ``Europe/Berlin``; UTC when unset) as "30 Nov 2026, 14:05 CET". A model
version is the push time in seconds, which says nothing to a reader: pages name the model
by its push date instead ("model of 30 Nov 2026, v1796003788").
"""

import datetime as dt
from typing import Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, current_app

from webapp.settings import SettingsError


def time_zone(name: Optional[str]) -> dt.tzinfo:
    """The zone called `name` (UTC for None or "").

    Raises:
        SettingsError: the name is not an IANA time zone.
    """
    if not name or name == "UTC":
        return dt.timezone.utc  # needs no time zone database (slim containers lack one)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise SettingsError(f"KOA_TIME_ZONE={name!r} is not a time zone name "
                            "(e.g. Europe/Berlin)") from e


def local_time(value: Optional[dt.datetime], with_time: bool = True) -> str:
    """A stored UTC time (naive = UTC) in the configured zone, e.g. "30 Nov 2026, 14:05 CET"."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    local = value.astimezone(current_app.config["KOA_TIME_ZONE_INFO"])
    return local.strftime("%-d %b %Y, %H:%M %Z" if with_time else "%-d %b %Y")


def model_label(name: str, version, pushed_at: Optional[str]) -> str:
    """"koa model of 14 Mar 2025, v1"; without a readable push time "koa v1"."""
    try:
        pushed = dt.datetime.fromisoformat(pushed_at) if pushed_at else None
    except ValueError:
        pushed = None
    if pushed is None:
        return f"{name} v{version}"
    return f"{name} model of {local_time(pushed, with_time=False)}, v{version}"


def init_app(app: Flask) -> None:
    """Checks the time zone setting and registers the template filters."""
    app.config["KOA_TIME_ZONE_INFO"] = time_zone(app.config.get("KOA_TIME_ZONE"))
    app.add_template_filter(local_time, "local_time")
    app.add_template_global(model_label, "model_label")
