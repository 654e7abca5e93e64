# Shared by psql.sh and pgbench.sh: the environment contract (tests/compat/README.md) and the
# `ok name` / `FAIL name: why` reporting. Sourced, not run.
set -uo pipefail

: "${DW_PROXY_URL:?}" "${DW_UPSTREAM_URL:?}" "${DW_USER:?}"
# psql and pgbench of the server's installation when the test names it, else the ones on PATH.
PSQL="${DW_PG_BINDIR:+$DW_PG_BINDIR/}psql"
PGBENCH="${DW_PG_BINDIR:+$DW_PG_BINDIR/}pgbench"
export PGCONNECT_TIMEOUT=10
unset PGOPTIONS PGSERVICE

passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $(echo "$2" | tr -s '\n\t ' ' ' | sed 's/ $//')"; }

# check NAME COMMAND...: runs the command (a function) and reports ok, or FAIL with what it printed.
check() {
  local name="$1" output
  shift
  if output="$("$@" 2>&1)"; then ok "$name"; else fail "$name" "$output"; fi
}

# expect_eq ACTUAL EXPECTED WHAT
expect_eq() {
  if [[ "$1" != "$2" ]]; then
    echo "$3: expected '$2', got '$1'"
    return 1
  fi
}

# url_with_version URL VERSION: the URL with options=-c dualwrite.version=VERSION.
url_with_version() {
  local separator='?'
  [[ "$1" == *\?* ]] && separator='&'
  echo "$1${separator}options=-c%20dualwrite.version%3D$2"
}

# proxy_sql [URL-VERSION] SQL: runs SQL through the proxy, unaligned tuples only.
proxy_sql() { "$PSQL" "$DW_PROXY_URL" -X -q -v ON_ERROR_STOP=1 -tA -c "$1"; }
upstream_sql() { "$PSQL" "$DW_UPSTREAM_URL" -X -q -v ON_ERROR_STOP=1 -tA -c "$1"; }

finish() {
  echo "done: $passed ok, $failed failed"
  ((failed == 0))
  exit $?
}
