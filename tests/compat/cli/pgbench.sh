#!/usr/bin/env bash
# pgbench through the dualwrite proxy: the checks of tests/compat/README.md that pgbench can make
# (it has no cancel; its COPY is the one `pgbench -i` uses to load pgbench_accounts).
source "$(dirname "$0")/lib.sh"

scripts="$(mktemp -d)"
trap 'rm -rf "$scripts"' EXIT

cat >"$scripts/insert.sql" <<'SQL'
INSERT INTO users (name, email) VALUES ('Ada Lovelace', 'Ada.Lovelace@Example.ORG');
SQL
cat >"$scripts/update.sql" <<'SQL'
\set id random(1, 20)
BEGIN;
UPDATE users SET name = 'Grace Hopper' WHERE id = :id;
SELECT name FROM users WHERE id = :id;
END;
SQL
cat >"$scripts/read_v1.sql" <<'SQL'
\set id random(1, 20)
SELECT name, email FROM users WHERE id = :id;
SQL
cat >"$scripts/read_v2.sql" <<'SQL'
\set id random(1, 20)
SELECT first_name, last_name, email FROM users WHERE id = :id;
SQL

# bench URL ARGS...: a short pgbench run through the proxy; fails on any failed transaction.
bench() {
  local url="$1" errors
  shift
  # The report (stdout) is dropped; on failure only pgbench's error lines are shown.
  errors="$("$PGBENCH" -n "$@" "$url" 2>&1 >/dev/null)" && return 0
  echo "$errors" | grep -i 'error' | head -n 3
  return 1
}

# How many rows of users have no exact image in users_v2 under the forward mapping (or vice versa).
mapping_mismatches() {
  upstream_sql "SELECT count(*) FROM users u FULL JOIN users_v2 v USING (id)
                WHERE v.id IS NULL OR u.id IS NULL
                   OR (split_part(u.name, ' ', 1), split_part(u.name, ' ', 2), lower(u.email))
                      IS DISTINCT FROM (v.first_name, v.last_name, v.email)"
}

connect_scram() { bench "$DW_PROXY_URL" -t 1 -f "$scripts/read_v1.sql" >/dev/null; }

copy_in() {
  # -i creates the pgbench tables (DDL) and loads pgbench_accounts with COPY FROM STDIN.
  local out
  out="$("$PGBENCH" -i -s 1 -q "$DW_PROXY_URL" 2>&1)" || { echo "$out" | grep -i error | head -n 3; return 1; }
  expect_eq "$(upstream_sql 'SELECT count(*) FROM pgbench_accounts')" 100000 "accounts loaded"
}

tpcb() {
  local mode="$1" before
  before="$(upstream_sql 'SELECT count(*) FROM pgbench_history')" || return 1
  bench "$DW_PROXY_URL" -M "$mode" -c 2 -t 25 || return 1
  # Every transaction of the built-in TPC-B-like script commits one pgbench_history row.
  expect_eq "$(upstream_sql 'SELECT count(*) FROM pgbench_history')" "$((before + 50))" "history rows"
}
simple_query() { tpcb simple; }
prepared_query() { tpcb prepared; }
transaction_commit() { tpcb extended; }

dual_write_insert() {
  bench "$DW_PROXY_URL" -M prepared -c 2 -t 10 -f "$scripts/insert.sql" || return 1
  expect_eq "$(upstream_sql 'SELECT count(*) FROM users')" 20 "rows in users" &&
    expect_eq "$(upstream_sql 'SELECT count(*) FROM users_v2')" 20 "rows in users_v2" &&
    expect_eq "$(mapping_mismatches)" 0 "rows whose users_v2 image differs"
}

dual_write_update() {
  bench "$DW_PROXY_URL" -M extended -c 2 -t 10 -f "$scripts/update.sql" || return 1
  expect_eq "$(upstream_sql "SELECT count(*) > 0 FROM users_v2 WHERE first_name = 'Grace'")" t "updated rows in users_v2" &&
    expect_eq "$(mapping_mismatches)" 0 "rows whose users_v2 image differs"
}

read_v1() { bench "$(url_with_version "$DW_PROXY_URL" v1)" -M prepared -t 10 -f "$scripts/read_v1.sql"; }
read_v2() { bench "$(url_with_version "$DW_PROXY_URL" v2)" -M prepared -t 10 -f "$scripts/read_v2.sql"; }

for name in connect_scram copy_in simple_query prepared_query transaction_commit \
  dual_write_insert dual_write_update read_v1 read_v2; do
  check "$name" "$name"
done
finish
