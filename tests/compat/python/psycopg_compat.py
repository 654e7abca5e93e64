"""psycopg 3 through the dualwrite proxy: the checks of tests/compat/README.md."""

import threading
import time

import psycopg

from compat_common import (
    PROXY_URL, UPSTREAM_URL, USER, V1_NAME, V1_EMAIL, V2_ROW, UPDATED_NAME, UPDATED_V2,
    Checks, expect, expect_eq, with_version,
)

checks = Checks()
state = {}


def proxy(version=None, **kwargs):
    url = with_version(PROXY_URL, version) if version else PROXY_URL
    return psycopg.connect(url, connect_timeout=10, **kwargs)


def upstream():
    return psycopg.connect(UPSTREAM_URL, autocommit=True)


def inserted_id():
    expect("id" in state, "no row: dual_write_insert failed")
    return state["id"]


def connect_scram():
    with proxy() as conn:
        expect_eq(conn.execute("SELECT current_user").fetchone()[0], USER, "current_user")


def simple_query():
    with proxy(autocommit=True) as conn:
        # No parameters: psycopg sends a simple Query, which may hold several statements.
        cur = conn.execute("SELECT 1 AS a; SELECT 'two' AS b")
        expect_eq(cur.fetchone(), (1,), "first result")
        expect(cur.nextset(), "no second result set")
        expect_eq(cur.fetchone(), ("two",), "second result")


def prepared_query():
    with proxy() as conn:
        for n in range(3):  # prepare=True: Parse once under a name, then Bind/Execute
            row = conn.execute("SELECT %s::int + 1, %s::text", (n, "x"), prepare=True).fetchone()
            expect_eq(row, (n + 1, "x"), "prepared result")


def transaction_commit():
    with proxy() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (1, "kept"))
    with upstream() as up:
        expect_eq(up.execute("SELECT body FROM notes WHERE id = 1").fetchone(), ("kept",), "committed row")


def transaction_rollback():
    with proxy() as conn:
        conn.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (2, "dropped"))
        conn.rollback()
    with upstream() as up:
        expect_eq(up.execute("SELECT count(*) FROM notes WHERE id = 2").fetchone()[0], 0, "rolled-back rows")


def dual_write_insert():
    with proxy() as conn:
        row = conn.execute(
            "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id", (V1_NAME, V1_EMAIL)
        ).fetchone()
        conn.commit()
    state["id"] = row[0]
    with upstream() as up:
        old = up.execute("SELECT name, email FROM users WHERE id = %s", (row[0],)).fetchone()
        expect_eq(old, (V1_NAME, V1_EMAIL), "row in users")
        new = up.execute(
            "SELECT first_name, last_name, email FROM users_v2 WHERE id = %s", (row[0],)
        ).fetchone()
        expect_eq(new, V2_ROW, "row in users_v2")


def dual_write_update():
    user_id = inserted_id()
    with proxy() as conn:
        try:
            cur = conn.execute("UPDATE users SET name = %s WHERE id = %s", (UPDATED_NAME, user_id), prepare=True)
            expect_eq(cur.rowcount, 1, "rows updated")
            conn.commit()
            with upstream() as up:
                new = up.execute("SELECT first_name, last_name FROM users_v2 WHERE id = %s", (user_id,)).fetchone()
                expect_eq(new, UPDATED_V2, "users_v2 after the update")
        finally:
            # Put the original name back so the reads below see the inserted row.
            conn.rollback()
            conn.execute("UPDATE users SET name = %s WHERE id = %s", (V1_NAME, user_id), prepare=True)
            conn.commit()


def dual_write_rollback():
    with proxy() as conn:
        row = conn.execute(
            "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id", ("Rolled Back", "r@b")
        ).fetchone()
        conn.rollback()
    with upstream() as up:
        counts = up.execute(
            "SELECT (SELECT count(*) FROM users WHERE id = %s), (SELECT count(*) FROM users_v2 WHERE id = %s)",
            (row[0], row[0]),
        ).fetchone()
        expect_eq(counts, (0, 0), "rows in users, users_v2")


def read_v1():
    user_id = inserted_id()
    with proxy("v1") as conn:
        row = conn.execute("SELECT name, email FROM users WHERE id = %s", (user_id,)).fetchone()
        expect_eq(row, (V1_NAME, V1_EMAIL), "v1 row")


def read_v2():
    user_id = inserted_id()
    with proxy("v2") as conn:
        row = conn.execute("SELECT first_name, last_name, email FROM users WHERE id = %s", (user_id,)).fetchone()
        expect_eq(row, V2_ROW, "v2 row")


def show_version():
    with proxy("v2") as conn:
        expect_eq(conn.execute("SHOW dualwrite.version").fetchone()[0], "v2", "dualwrite.version")


def copy_in():
    with proxy() as conn:
        with conn.cursor().copy("COPY notes (id, body) FROM STDIN") as copy:
            for n in range(100, 110):
                copy.write_row((n, f"copied {n}"))
        conn.commit()
    with upstream() as up:
        expect_eq(up.execute("SELECT count(*) FROM notes WHERE id >= 100").fetchone()[0], 10, "copied rows")


def copy_out():
    with proxy() as conn:
        with conn.cursor().copy("COPY (SELECT id, body FROM notes WHERE id >= 100 ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
    expect_eq(len(rows), 10, "rows copied out")
    expect_eq(rows[0], ("100", "copied 100"), "first row")


def copy_into_migrated():
    # COPY FROM STDIN as a simple Query: the proxy dual-writes it (users and users_v2).
    with proxy() as conn:
        with conn.cursor().copy("COPY users (name, email) FROM STDIN") as copy:
            copy.write_row(("Copy Person", "COPY@Example.org"))
        conn.commit()
    with upstream() as up:
        row = up.execute(
            "SELECT (SELECT count(*) FROM users WHERE email = 'COPY@Example.org'), "
            "(SELECT count(*) FROM users_v2 WHERE first_name = 'Copy' AND last_name = 'Person' "
            "AND email = 'copy@example.org')").fetchone()
        expect_eq(tuple(row), (1, 1), "rows in users and users_v2")


def cancel():
    with proxy() as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
        except psycopg.errors.QueryCanceled:
            pass
        else:
            raise AssertionError("pg_sleep(30) was not cancelled")
        finally:
            timer.cancel()
        expect(time.monotonic() - started < 20, "cancel took too long")


for check in (connect_scram, simple_query, prepared_query, transaction_commit, transaction_rollback,
              dual_write_insert, dual_write_update, dual_write_rollback, read_v1, read_v2, show_version,
              copy_in, copy_out, copy_into_migrated, cancel):
    checks.run(check.__name__, check)
checks.finish()
