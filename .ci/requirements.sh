# Sourced by .ci/install (which installs what is missing) and .ci/test (which refuses to start without it):
# the tools and drivers the test suite runs, beyond Rust and the PostgreSQL 15 server.
#
# "check|package": the Debian package is needed when the check (a command name, or an absolute path that
# must exist) fails. Extend this list when a test needs another tool or driver.
requirements=(
  "/usr/lib/postgresql/15/bin/postgres|postgresql-15"
  "/usr/lib/postgresql/15/bin/psql|postgresql-client-15"
  "pgbouncer|pgbouncer"
  "docker-compose|docker-compose"
  "promtool|prometheus"
  "openssl|openssl"
  "/usr/share/java/postgresql.jar|libpostgresql-jdbc-java"
  "javac|default-jdk-headless"
  "python3|python3"  # the compatibility matrix's drivers (tests/compat/install.sh installs them)
  "pip3|python3-pip"
  "npm|npm"
  "runuser|util-linux"
  "prlimit|util-linux"
  "/etc/ssl/certs/ca-certificates.crt|ca-certificates"  # sslrootcert=system (security_tls)
)

# The Debian packages whose check fails, one per line (each once).
missing_packages() {
  local requirement check package
  for requirement in "${requirements[@]}"; do
    check="${requirement%%|*}"
    package="${requirement#*|}"
    if [[ "$check" == /* ]]; then
      [[ -e "$check" ]] && continue
    else
      command -v "$check" >/dev/null 2>&1 && continue
    fi
    echo "$package"
  done | sort -u
}
