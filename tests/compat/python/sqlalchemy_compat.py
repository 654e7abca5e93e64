"""SQLAlchemy 2 (ORM and Core, on psycopg 3) through the dualwrite proxy: the checks of
tests/compat/README.md. SQLAlchemy has no COPY or cancel API of its own, so those checks are psycopg's."""

from sqlalchemy import Integer, String, create_engine, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from compat_common import (
    PROXY_URL, UPSTREAM_URL, USER, V1_NAME, V1_EMAIL, V2_ROW, UPDATED_NAME, UPDATED_V2,
    Checks, expect, expect_eq, with_version,
)

checks = Checks()
state = {}


def sqlalchemy_url(url):
    return url.replace("postgres://", "postgresql+psycopg://", 1)


proxy_engine = create_engine(sqlalchemy_url(PROXY_URL))
upstream_engine = create_engine(sqlalchemy_url(UPSTREAM_URL))


def engine_for(version):
    return create_engine(sqlalchemy_url(with_version(PROXY_URL, version)))


class V1(DeclarativeBase):
    pass


class V2(DeclarativeBase):
    pass


class User(V1):
    """`users` as version v1 code sees it."""
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    email: Mapped[str] = mapped_column(String)


class UserV2(V2):
    """`users` as version v2 code sees it: the same logical table name, the new shape."""
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_name: Mapped[str] = mapped_column(String)
    last_name: Mapped[str] = mapped_column(String)
    email: Mapped[str] = mapped_column(String)


def upstream_row(query, **params):
    with upstream_engine.connect() as conn:
        return conn.execute(text(query), params).first()


def inserted_id():
    expect("id" in state, "no row: dual_write_insert failed")
    return state["id"]


def connect_scram():
    with proxy_engine.connect() as conn:
        expect_eq(conn.execute(text("SELECT current_user")).scalar(), USER, "current_user")


def simple_query():
    with proxy_engine.connect() as conn:
        expect_eq(conn.exec_driver_sql("SELECT 1 AS a").scalar(), 1, "result")


def prepared_query():
    with proxy_engine.connect() as conn:
        for n in range(3):
            row = conn.execute(text("SELECT CAST(:n AS int) + 1, CAST(:s AS text)"), {"n": n, "s": "x"}).first()
            expect_eq(tuple(row), (n + 1, "x"), "bound result")


def transaction_commit():
    with proxy_engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (:id, :body)"), {"id": 1, "body": "kept"})
    expect_eq(tuple(upstream_row("SELECT body FROM notes WHERE id = 1")), ("kept",), "committed row")


def transaction_rollback():
    with proxy_engine.connect() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (:id, :body)"), {"id": 2, "body": "dropped"})
        conn.rollback()
    expect_eq(upstream_row("SELECT count(*) FROM notes WHERE id = 2")[0], 0, "rolled-back rows")


def dual_write_insert():
    with Session(proxy_engine) as session:
        user = User(name=V1_NAME, email=V1_EMAIL)
        session.add(user)
        session.commit()  # the ORM's INSERT ... RETURNING users.id
        state["id"] = user.id
    old = upstream_row("SELECT name, email FROM users WHERE id = :id", id=state["id"])
    expect_eq(tuple(old), (V1_NAME, V1_EMAIL), "row in users")
    new = upstream_row("SELECT first_name, last_name, email FROM users_v2 WHERE id = :id", id=state["id"])
    expect_eq(new and tuple(new), V2_ROW, "row in users_v2")


def dual_write_update():
    user_id = inserted_id()
    with Session(proxy_engine) as session:
        try:
            result = session.execute(update(User).where(User.id == user_id).values(name=UPDATED_NAME))
            expect_eq(result.rowcount, 1, "rows updated")
            session.commit()
            new = upstream_row("SELECT first_name, last_name FROM users_v2 WHERE id = :id", id=user_id)
            expect_eq(new and tuple(new), UPDATED_V2, "users_v2 after the update")
        finally:
            session.rollback()
            session.execute(update(User).where(User.id == user_id).values(name=V1_NAME))
            session.commit()


def dual_write_rollback():
    with Session(proxy_engine) as session:
        user = User(name="Rolled Back", email="r@b")
        session.add(user)
        session.flush()
        user_id = user.id
        session.rollback()
    counts = upstream_row(
        "SELECT (SELECT count(*) FROM users WHERE id = :id), (SELECT count(*) FROM users_v2 WHERE id = :id)",
        id=user_id)
    expect_eq(tuple(counts), (0, 0), "rows in users, users_v2")


def read_v1():
    user_id = inserted_id()
    engine = engine_for("v1")
    try:
        with Session(engine) as session:
            user = session.scalars(select(User).where(User.id == user_id)).one()
            expect_eq((user.name, user.email), (V1_NAME, V1_EMAIL), "v1 row")
    finally:
        engine.dispose()


def read_v2():
    user_id = inserted_id()
    engine = engine_for("v2")
    try:
        with Session(engine) as session:
            user = session.scalars(select(UserV2).where(UserV2.id == user_id)).one()
            expect_eq((user.first_name, user.last_name, user.email), V2_ROW, "v2 row")
    finally:
        engine.dispose()


def show_version():
    engine = engine_for("v2")
    try:
        with engine.connect() as conn:
            expect_eq(conn.exec_driver_sql("SHOW dualwrite.version").scalar(), "v2", "dualwrite.version")
    finally:
        engine.dispose()


for check in (connect_scram, simple_query, prepared_query, transaction_commit, transaction_rollback,
              dual_write_insert, dual_write_update, dual_write_rollback, read_v1, read_v2, show_version):
    checks.run(check.__name__, check)
proxy_engine.dispose()
upstream_engine.dispose()
checks.finish()
