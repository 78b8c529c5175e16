"""What PostgreSQL shows and SQLite hides: the URL operators write, connections the
server drops, strings longer than their column.

The web tests of conftest.POSTGRES_MODULES run on PostgreSQL as a whole; these cover how
the app meets a database server. PostgreSQL runs skip, with the reason, where no server
can be started.
"""

import pytest
import sqlalchemy as sa

import webapp_images as wi
from webapp import db
from webapp.models import Prediction
from webapp_testlib import CLINICIAN, AuthActions, upload, write_model_card

on_postgresql = pytest.mark.parametrize("database_kind", ["postgresql"], indirect=True)
on_both = pytest.mark.parametrize("database_kind", ["sqlite", "postgresql"], indirect=True)


def _without_driver(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@on_postgresql
def test_a_postgresql_url_without_driver_uses_the_installed_one(new_database_url):
    url = _without_driver(new_database_url())
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.dialect.driver == "psycopg"
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()


@on_postgresql
def test_pages_survive_the_server_closing_pooled_connections(make_app, postgres_server):
    app = make_app()
    client = app.test_client()
    assert AuthActions(client).login(CLINICIAN).status_code == 302
    assert client.get("/history").status_code == 200
    # A database restart or an idle timeout ends the connections the app keeps pooled.
    database = db.engine_of(app).url.database
    admin = sa.create_engine(postgres_server.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        ended = conn.execute(
            sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"),
            {"name": database}).scalar()
    admin.dispose()
    assert ended >= 1
    assert client.get("/history").status_code == 200


@on_both
def test_a_model_card_value_longer_than_its_column_does_not_break_grading(make_app, tmp_path):
    # SQLite stores any length in VARCHAR(80); PostgreSQL refuses the whole row.
    write_model_card(str(tmp_path), 1, dvc_data_md5="d" * 200)
    app = make_app(KOA_MODEL_BASE_PATH=str(tmp_path))
    client = app.test_client()
    AuthActions(client).login(CLINICIAN)
    response = upload(client, [("knee.png", wi.png_of_grade(1))], json_response=True)
    assert response.status_code == 201
    with app.app_context():
        (stored,) = db.get_session().scalars(sa.select(Prediction)).all()
        # The card is refused as malformed (logged), so the grade carries no data version.
        assert (stored.status, stored.grade is not None, stored.data_version) == ("done", True, None)
    assert client.get("/model").status_code == 200
