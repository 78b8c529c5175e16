"""Account administration (admins only): create users, enable and disable them."""

import logging

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from webapp import sessions
from webapp.auth import admin_required
from webapp.db import get_session
from webapp.forms import ConfirmForm, UserForm
from webapp.models import User
from webapp.users import UserExistsError, create_user

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.route("/users", methods=("GET", "POST"))
@admin_required
def users():
    """Lists accounts; POST creates one."""
    session = get_session()
    form = UserForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = create_user(session, form.username.data, form.password.data, form.role.data)
        except UserExistsError as e:
            flash(str(e), "error")
            status = 409
        else:
            logger.info("admin %s created user %s (%s)", current_user.id, user.id, user.role)
            flash(f"User {user.username} created as {user.role}.", "info")
            return redirect(url_for("admin.users"), code=303)
    elif request.method == "POST":
        status = 400
    rows = session.scalars(sa.select(User).order_by(User.username)).all()
    return (
        render_template("admin/users.html", form=form, users=rows, toggle_form=ConfirmForm()),
        status,
    )


@bp.route("/users/<id:user_id>/toggle", methods=("POST",))
@admin_required
def toggle_user(user_id: int):
    """Enables or disables an account (an admin cannot disable themself).

    Raises:
        404 if the user does not exist; 409 for one's own account.
    """
    if not ConfirmForm().validate_on_submit():
        abort(400, description="The form expired; reload the page.")
    session = get_session()
    user = session.get(User, user_id)
    if user is None:
        abort(404, description=f"User {user_id} does not exist.")
    if user.id == current_user.id:
        abort(409, description="You cannot disable your own account.")
    user.active = not user.active
    if not user.active:
        sessions.revoke_all(session, user.id)
    session.commit()
    logger.info("admin %s set user %s active=%s", current_user.id, user.id, user.active)
    flash(f"User {user.username} {'enabled' if user.active else 'disabled'}.", "info")
    return redirect(url_for("admin.users"), code=303)
