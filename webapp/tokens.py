"""API bearer tokens: generated once, shown once, stored only as a SHA-256 digest."""

import datetime as dt
import hashlib
import secrets
from typing import Optional, Tuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from webapp.models import ApiToken, User, utcnow

TOKEN_PREFIX = "koa_"
# 32 random bytes: a digest suffices for storage, no slow hash needed for this entropy.
_TOKEN_BYTES = 32
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, user: User, name: str) -> Tuple[ApiToken, str]:
    """Creates a token for ``user`` and commits.

    Returns:
        The stored row and the plaintext token (the only time it exists).
    """
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    row = ApiToken(
        user_id=user.id,
        name=name.strip()[:80],
        token_hash=_digest(plaintext),
        prefix=plaintext[:12],
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    return row, plaintext


def authenticate(session: Session, plaintext: str) -> Optional[User]:
    """Returns the active user owning an unrevoked token, or None; notes its last use."""
    if not plaintext or not plaintext.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(
        sa.select(ApiToken).where(
            ApiToken.token_hash == _digest(plaintext), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None or not row.user.is_active:
        return None
    now = utcnow()
    # Record use at most once a minute: a write per API call would serialise them.
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row.user


def revoke(session: Session, token: ApiToken) -> None:
    """Revokes a token for good and commits."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()
