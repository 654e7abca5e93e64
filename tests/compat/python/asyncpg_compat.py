"""asyncpg through the dualwrite proxy: the checks of tests/compat/README.md."""

import asyncio
import io
import time

import asyncpg

from compat_common import (
    PROXY_URL, UPSTREAM_URL, USER, V1_NAME, V1_EMAIL, V2_ROW, UPDATED_NAME, UPDATED_V2,
    Checks, expect, expect_eq, with_version,
)

checks = Checks()
state = {}


async def proxy(version=None):
    # asyncpg passes unknown URL parameters (here `options`) to the server as startup parameters.
    return await asyncpg.connect(with_version(PROXY_URL, version) if version else PROXY_URL, timeout=10)


async def upstream_fetchrow(query, *args):
    conn = await asyncpg.connect(UPSTREAM_URL, timeout=10)
    try:
        return await conn.fetchrow(query, *args)
    finally:
        await conn.close()


def inserted_id():
    expect("id" in state, "no row: dual_write_insert failed")
    return state["id"]


async def connect_scram():
    conn = await proxy()
    try:
        expect_eq(await conn.fetchval("SELECT current_user"), USER, "current_user")
    finally:
        await conn.close()


async def simple_query():
    conn = await proxy()
    try:
        # execute() without arguments uses the simple protocol, so several statements are allowed.
        await conn.execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        expect_eq(await conn.fetchval("SELECT sum(x) FROM t"), 3, "sum")
    finally:
        await conn.close()


async def prepared_query():
    conn = await proxy()
    try:
        statement = await conn.prepare("SELECT $1::int + 1, $2::text")
        for n in range(3):
            expect_eq(tuple(await statement.fetchrow(n, "x")), (n + 1, "x"), "prepared result")
    finally:
        await conn.close()


async def transaction_commit():
    conn = await proxy()
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 1, "kept")
    finally:
        await conn.close()
    expect_eq(tuple(await upstream_fetchrow("SELECT body FROM notes WHERE id = 1")), ("kept",), "committed row")


async def transaction_rollback():
    conn = await proxy()
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 2, "dropped")
        await transaction.rollback()
    finally:
        await conn.close()
    expect_eq((await upstream_fetchrow("SELECT count(*) FROM notes WHERE id = 2"))[0], 0, "rolled-back rows")


async def dual_write_insert():
    conn = await proxy()
    try:
        user_id = await conn.fetchval("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", V1_NAME, V1_EMAIL)
    finally:
        await conn.close()
    state["id"] = user_id
    old = await upstream_fetchrow("SELECT name, email FROM users WHERE id = $1", user_id)
    expect_eq(tuple(old), (V1_NAME, V1_EMAIL), "row in users")
    new = await upstream_fetchrow("SELECT first_name, last_name, email FROM users_v2 WHERE id = $1", user_id)
    expect_eq(new and tuple(new), V2_ROW, "row in users_v2")


async def dual_write_update():
    user_id = inserted_id()
    conn = await proxy()
    try:
        status = await conn.execute("UPDATE users SET name = $1 WHERE id = $2", UPDATED_NAME, user_id)
        expect_eq(status, "UPDATE 1", "command tag")
        new = await upstream_fetchrow("SELECT first_name, last_name FROM users_v2 WHERE id = $1", user_id)
        expect_eq(new and tuple(new), UPDATED_V2, "users_v2 after the update")
    finally:
        await conn.execute("UPDATE users SET name = $1 WHERE id = $2", V1_NAME, user_id)
        await conn.close()


async def dual_write_rollback():
    conn = await proxy()
    try:
        transaction = conn.transaction()
        await transaction.start()
        user_id = await conn.fetchval("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", "Rolled Back", "r@b")
        await transaction.rollback()
    finally:
        await conn.close()
    counts = await upstream_fetchrow(
        "SELECT (SELECT count(*) FROM users WHERE id = $1), (SELECT count(*) FROM users_v2 WHERE id = $1)", user_id)
    expect_eq(tuple(counts), (0, 0), "rows in users, users_v2")


async def read_v1():
    user_id = inserted_id()
    conn = await proxy("v1")
    try:
        row = await conn.fetchrow("SELECT name, email FROM users WHERE id = $1", user_id)
        expect_eq(tuple(row), (V1_NAME, V1_EMAIL), "v1 row")
    finally:
        await conn.close()


async def read_v2():
    user_id = inserted_id()
    conn = await proxy("v2")
    try:
        row = await conn.fetchrow("SELECT first_name, last_name, email FROM users WHERE id = $1", user_id)
        expect_eq(row and tuple(row), V2_ROW, "v2 row")
    finally:
        await conn.close()


async def show_version():
    conn = await proxy("v2")
    try:
        expect_eq(await conn.fetchval("SHOW dualwrite.version"), "v2", "dualwrite.version")
    finally:
        await conn.close()


async def copy_in():
    conn = await proxy()
    try:
        status = await conn.copy_records_to_table(
            "notes", records=[(n, f"copied {n}") for n in range(100, 110)], columns=["id", "body"])
        expect_eq(status, "COPY 10", "command tag")
    finally:
        await conn.close()
    expect_eq((await upstream_fetchrow("SELECT count(*) FROM notes WHERE id >= 100"))[0], 10, "copied rows")


async def copy_out():
    conn = await proxy()
    try:
        sink = io.BytesIO()
        await conn.copy_from_query("SELECT id, body FROM notes WHERE id >= 100 ORDER BY id", output=sink)
    finally:
        await conn.close()
    lines = sink.getvalue().decode().splitlines()
    expect_eq(len(lines), 10, "rows copied out")
    expect_eq(lines[0], "100\tcopied 100", "first row")


async def copy_into_migrated():
    # asyncpg sends COPY FROM STDIN (binary) as a simple Query: the proxy dual-writes it.
    conn = await proxy()
    try:
        status = await conn.copy_records_to_table(
            "users", records=[("Copy Person", "COPY@Example.org")], columns=["name", "email"])
        expect_eq(status, "COPY 1", "command tag")
    finally:
        await conn.close()
    row = await upstream_fetchrow(
        "SELECT (SELECT count(*) FROM users WHERE email = 'COPY@Example.org'), "
        "(SELECT count(*) FROM users_v2 WHERE first_name = 'Copy' AND last_name = 'Person' "
        "AND email = 'copy@example.org')")
    expect_eq(tuple(row), (1, 1), "rows in users and users_v2")


async def cancel():
    conn = await proxy()
    try:
        started = time.monotonic()
        # A timeout cancels the task, and asyncpg then sends a CancelRequest for the running query.
        try:
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
        except asyncio.TimeoutError:
            pass
        else:
            raise AssertionError("pg_sleep(30) was not cancelled")
        # The connection must still be usable once the server has processed the cancel.
        expect_eq(await conn.fetchval("SELECT 1"), 1, "query after the cancel")
        expect(time.monotonic() - started < 20, "cancel took too long")
        pids = await upstream_fetchrow(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
        expect_eq(pids[0], 0, "pg_sleep still running upstream")
    finally:
        await conn.close()


async def main():
    for check in (connect_scram, simple_query, prepared_query, transaction_commit, transaction_rollback,
                  dual_write_insert, dual_write_update, dual_write_rollback, read_v1, read_v2, show_version,
                  copy_in, copy_out, copy_into_migrated, cancel):
        await checks.run_async(check.__name__, check)


asyncio.run(main())
checks.finish()
