"""Server-side sign-in sessions: a session cookie is only good while its row here is.

The browser's (signed) session cookie carries Flask-Login's user id in the form
``"<user id>:<token>"`` (Flask-Login's "alternative token" pattern); the database keeps the
token's SHA-256 per sign-in. Signing out revokes that sign-in, changing the password revokes
the account's other sign-ins, disabling the account revokes all of them: a copied cookie
stops working at once, wherever it is.
"""

import hashlib
import secrets
from typing import Optional

import sqlalchemy as sa
from sqlalchemy.orm import Session

from webapp.models import User, UserSession, utcnow
from webapp.row_ids import parse_row_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(db: Session, user: User) -> None:
    """Records a new sign-in of ``user`` and gives ``user`` its token (``get_id`` then
    returns ``"<id>:<token>"``, which Flask-Login puts into the session cookie)."""
    token = secrets.token_urlsafe(32)
    db.add(UserSession(user_id=user.id, token_hash=_digest(token)))
    db.commit()
    user.session_token = token


def load(db: Session, session_id: str) -> Optional[User]:
    """The active user of a live sign-in, from the id Flask-Login stored; None when the
    id is malformed, the sign-in was revoked or the account is disabled."""
    user_part, _, token = (session_id or "").partition(":")
    user_id = parse_row_id(user_part)
    if user_id is None or not token:
        return None
    live = db.scalar(sa.select(UserSession).where(
        UserSession.user_id == user_id, UserSession.token_hash == _digest(token),
        UserSession.revoked_at.is_(None)))
    if live is None or not live.user.is_active:
        return None
    live.user.session_token = token
    return live.user


def revoke(db: Session, user: User) -> None:
    """Ends the sign-in ``user`` was loaded with (signing out)."""
    token = getattr(user, "session_token", None)
    if token:
        db.execute(sa.update(UserSession).where(
            UserSession.token_hash == _digest(token), UserSession.revoked_at.is_(None))
            .values(revoked_at=utcnow()))
        db.commit()


def revoke_all(db: Session, user_id: int, keep: Optional[str] = None) -> int:
    """Ends every live sign-in of an account, except the one with token ``keep``;
    returns how many were ended. The caller commits."""
    query = sa.update(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if keep:
        query = query.where(UserSession.token_hash != _digest(keep))
    return db.execute(query.values(revoked_at=utcnow())).rowcount
