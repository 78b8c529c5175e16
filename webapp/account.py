"""A user's own API tokens."""

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from webapp import tokens
from webapp.db import get_session
from webapp.forms import ConfirmForm, TokenForm
from webapp.models import ApiToken

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.route("/tokens", methods=("GET", "POST"))
@login_required
def api_tokens():
    """Lists the user's tokens; POST creates one and shows it once."""
    session = get_session()
    form = TokenForm()
    new_token = None
    status = 200
    if form.validate_on_submit():
        _, new_token = tokens.create_token(session, current_user, form.name.data)
        status = 201
    elif request.method == "POST":
        status = 400
    rows = session.scalars(
        sa.select(ApiToken)
        .where(ApiToken.user_id == current_user.id)
        .order_by(ApiToken.created_at.desc())
    ).all()
    return (
        render_template(
            "account/tokens.html",
            form=form,
            tokens=rows,
            new_token=new_token,
            revoke_form=ConfirmForm(),
        ),
        status,
    )


@bp.route("/tokens/<id:token_id>/revoke", methods=("POST",))
@login_required
def revoke_token(token_id: int):
    """Revokes one of the user's tokens.

    Raises:
        404 if the token does not exist or is another user's.
    """
    if not ConfirmForm().validate_on_submit():
        abort(400, description="The form expired; reload the page.")
    session = get_session()
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != current_user.id:
        abort(404, description=f"Token {token_id} does not exist.")
    tokens.revoke(session, token)
    flash(f"Token {token.name} revoked.", "info")
    return redirect(url_for("account.api_tokens"), code=303)
