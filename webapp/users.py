"""Creating accounts (used by the admin page and the create-admin command)."""

import sqlalchemy as sa
from sqlalchemy.orm import Session

from webapp.models import ROLES, User, utcnow


class UserExistsError(ValueError):
    """The username is taken."""


def create_user(session: Session, username: str, password: str, role: str) -> User:
    """Creates and commits an account with a hashed password.

    Raises:
        ValueError: for an unknown role or a too-short password.
        UserExistsError: if the username is taken.
    """
    username = username.strip()
    if not username:
        raise ValueError("username must not be empty")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if session.scalar(sa.select(User).where(User.username == username)) is not None:
        raise UserExistsError(f"user {username!r} already exists")
    user = User(username=username, role=role, active=True, created_at=utcnow())
    user.set_password(password)
    session.add(user)
    session.commit()
    return user
