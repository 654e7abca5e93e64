#!/usr/bin/env bash
# psql through the dualwrite proxy: the checks of tests/compat/README.md.
source "$(dirname "$0")/lib.sh"

V1_ROW='Ada Lovelace|Ada.Lovelace@Example.ORG'
V2_ROW='Ada|Lovelace|ada.lovelace@example.org'
user_id=""

connect_scram() { expect_eq "$(proxy_sql 'SELECT current_user')" "$DW_USER" current_user; }

simple_query() {
  # psql -c sends one simple Query; both results come back.
  expect_eq "$(proxy_sql "SELECT 1; SELECT 'two'")" $'1\ntwo' results
}

prepared_query() {
  expect_eq "$(proxy_sql 'PREPARE plus_one(int) AS SELECT $1 + 1; EXECUTE plus_one(41); EXECUTE plus_one(1)')" \
    $'42\n2' "prepared results"
}

transaction_commit() {
  "$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 <<'SQL' || return 1
BEGIN;
INSERT INTO notes (id, body) VALUES (1, 'kept');
COMMIT;
SQL
  expect_eq "$(upstream_sql 'SELECT body FROM notes WHERE id = 1')" kept "committed row"
}

transaction_rollback() {
  "$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 <<'SQL' || return 1
BEGIN;
INSERT INTO notes (id, body) VALUES (2, 'dropped');
ROLLBACK;
SQL
  expect_eq "$(upstream_sql 'SELECT count(*) FROM notes WHERE id = 2')" 0 "rolled-back rows"
}

dual_write_insert() {
  user_id="$(proxy_sql "INSERT INTO users (name, email) VALUES ('Ada Lovelace', 'Ada.Lovelace@Example.ORG') RETURNING id")" \
    || return 1
  expect_eq "$(upstream_sql "SELECT name, email FROM users WHERE id = $user_id")" "$V1_ROW" "row in users" &&
    expect_eq "$(upstream_sql "SELECT first_name, last_name, email FROM users_v2 WHERE id = $user_id")" "$V2_ROW" \
      "row in users_v2"
}

need_row() { [[ -n "$user_id" ]] || { echo "no row: dual_write_insert failed"; return 1; }; }

dual_write_update() {
  need_row || return 1
  local tag status=0
  tag="$("$PSQL" "$DW_PROXY_URL" -X -v ON_ERROR_STOP=1 -c "UPDATE users SET name = 'Grace Hopper' WHERE id = $user_id")" &&
    expect_eq "$tag" "UPDATE 1" "command tag" &&
    expect_eq "$(upstream_sql "SELECT first_name, last_name FROM users_v2 WHERE id = $user_id")" 'Grace|Hopper' \
      "users_v2 after the update" || status=1
  proxy_sql "UPDATE users SET name = 'Ada Lovelace' WHERE id = $user_id" >/dev/null
  return $status
}

dual_write_rollback() {
  local id
  id="$("$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 -tA <<'SQL'
BEGIN;
INSERT INTO users (name, email) VALUES ('Rolled Back', 'r@b') RETURNING id;
ROLLBACK;
SQL
)" || return 1
  expect_eq "$(upstream_sql "SELECT (SELECT count(*) FROM users WHERE id = $id), (SELECT count(*) FROM users_v2 WHERE id = $id)")" \
    '0|0' "rows in users, users_v2"
}

read_as() {
  "$PSQL" "$(url_with_version "$DW_PROXY_URL" "$1")" -X -q -v ON_ERROR_STOP=1 -tA -c "$2"
}

read_v1() {
  need_row || return 1
  expect_eq "$(read_as v1 "SELECT name, email FROM users WHERE id = $user_id")" "$V1_ROW" "v1 row"
}

read_v2() {
  need_row || return 1
  expect_eq "$(read_as v2 "SELECT first_name, last_name, email FROM users WHERE id = $user_id")" "$V2_ROW" "v2 row"
}

show_version() { expect_eq "$(read_as v2 'SHOW dualwrite.version')" v2 dualwrite.version; }

copy_in() {
  seq 100 109 | awk '{ print $1 "\tcopied " $1 }' |
    "$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 -c '\copy notes (id, body) from stdin' || return 1
  expect_eq "$(upstream_sql 'SELECT count(*) FROM notes WHERE id >= 100')" 10 "copied rows"
}

copy_out() {
  local out
  out="$("$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 \
    -c '\copy (SELECT id, body FROM notes WHERE id >= 100 ORDER BY id) to stdout')" || return 1
  expect_eq "$(echo "$out" | wc -l)" 10 "rows copied out" &&
    expect_eq "$(echo "$out" | head -1)" $'100\tcopied 100' "first row"
}

copy_into_migrated() {
  # \copy sends COPY FROM STDIN as a simple Query: the proxy dual-writes it (users and users_v2).
  local out
  out="$(printf 'Copy Person\tCOPY@Example.org\n' |
    "$PSQL" "$DW_PROXY_URL" -X -v ON_ERROR_STOP=1 -c '\copy users (name, email) from stdin' 2>&1)" || { echo "$out"; return 1; }
  expect_eq "$out" "COPY 1" "command tag"
  expect_eq "$(upstream_sql "SELECT (SELECT count(*) FROM users WHERE email = 'COPY@Example.org') || ',' || (SELECT count(*) FROM users_v2 WHERE first_name = 'Copy' AND last_name = 'Person' AND email = 'copy@example.org')")" "1,1" "rows in users and users_v2"
}

cancel() {
  # Ctrl-C in psql sends a CancelRequest for the running statement.
  local out started=$SECONDS
  out="$(timeout -s INT 1 "$PSQL" "$DW_PROXY_URL" -X -v VERBOSITY=verbose -c 'SELECT pg_sleep(30)' 2>&1)"
  [[ "$out" == *"57014"* ]] || { echo "expected SQLSTATE 57014, got: $out"; return 1; }
  ((SECONDS - started < 20)) || { echo "cancel took too long"; return 1; }
}

for name in connect_scram simple_query prepared_query transaction_commit transaction_rollback \
  dual_write_insert dual_write_update dual_write_rollback read_v1 read_v2 show_version \
  copy_in copy_out copy_into_migrated cancel; do
  if [[ "$name" == dual_write_insert ]]; then
    # Not in a subshell: the inserted id is needed by the checks after it.
    output="$(mktemp)"
    if dual_write_insert >"$output" 2>&1; then ok "$name"; else fail "$name" "$(cat "$output")"; fi
    rm -f "$output"
  else
    check "$name" "$name"
  fi
done
finish
