"""Login rate limiting, stored in the database so it holds across threads and processes.

A username is locked after ``KOA_LOGIN_MAX_FAILURES`` failed attempts within
``KOA_LOGIN_WINDOW_SECONDS`` (counted since its last successful sign-in); a
client address after four times as many failures over any usernames. While
locked, passwords are not even checked, so guessing gains nothing.
"""

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from webapp.models import LoginAttempt, utcnow

# Attempts older than this are deleted; they no longer count for anything.
_KEEP_FOR = dt.timedelta(days=1)
_ADDRESS_FACTOR = 4


def _failures_since(session: Session, column, value: str, since: dt.datetime) -> int:
    return session.scalar(
        sa.select(sa.func.count())
        .select_from(LoginAttempt)
        .where(column == value, LoginAttempt.success.is_(False), LoginAttempt.created_at >= since)
    )


def seconds_locked(
    session: Session, username: str, remote_addr: str, max_failures: int, window_seconds: int
) -> int:
    """How long sign-in stays refused for this username or address (0 if allowed)."""
    now = utcnow()
    window_start = now - dt.timedelta(seconds=window_seconds)
    last_success = session.scalar(
        sa.select(sa.func.max(LoginAttempt.created_at)).where(
            LoginAttempt.username == username, LoginAttempt.success.is_(True)
        )
    )
    user_since = max(window_start, last_success) if last_success else window_start
    user_failures = _failures_since(session, LoginAttempt.username, username, user_since)
    addr_failures = _failures_since(session, LoginAttempt.remote_addr, remote_addr, window_start)
    if user_failures < max_failures and addr_failures < max_failures * _ADDRESS_FACTOR:
        return 0
    oldest_counted = session.scalar(
        sa.select(sa.func.min(LoginAttempt.created_at)).where(
            sa.or_(LoginAttempt.username == username, LoginAttempt.remote_addr == remote_addr),
            LoginAttempt.success.is_(False),
            LoginAttempt.created_at >= window_start,
        )
    )
    unlock_at = (oldest_counted or now) + dt.timedelta(seconds=window_seconds)
    return max(1, int((unlock_at - now).total_seconds()))


def record_attempt(session: Session, username: str, remote_addr: str, success: bool) -> None:
    """Stores one attempt (and forgets attempts too old to matter); commits."""
    session.execute(sa.delete(LoginAttempt).where(LoginAttempt.created_at < utcnow() - _KEEP_FOR))
    session.add(
        LoginAttempt(
            username=username[:80],
            remote_addr=(remote_addr or "unknown")[:64],
            success=success,
            created_at=utcnow(),
        )
    )
    session.commit()
