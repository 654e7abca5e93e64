#!/usr/bin/env bash
# Installs what the driver programs of the compatibility matrix need, only when it is missing (so reruns are
# fast): the Python drivers (python/requirements.txt), node-postgres (node/package-lock.json, `npm ci`) and
# pgjdbc (Debian's libpostgresql-jdbc-java, run with Java 17). Called by .ci/run; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

apt_packages=()
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3 python3-pip)
command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
command -v java >/dev/null 2>&1 || apt_packages+=(default-jdk-headless)
[[ -e /usr/share/java/postgresql.jar ]] || apt_packages+=(libpostgresql-jdbc-java)
if ((${#apt_packages[@]})); then
  echo "==> compat: installing ${apt_packages[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

python_ready() {
  python3 - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
wanted = {}
for line in open("python/requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, pinned = line.split("==")
        wanted[name.split("[")[0]] = pinned
sys.exit(0 if all(version(name) == pinned for name, pinned in wanted.items()) else 1)
PY
}
if ! python_ready; then
  echo "==> compat: pip install -r python/requirements.txt"
  # Debian's own python3 refuses pip installs into it unless told (PEP 668); a pyenv/venv python does not.
  python3 -m pip install --quiet --disable-pip-version-check -r python/requirements.txt ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r python/requirements.txt
fi

if [[ ! -f node/node_modules/.package-lock.json || node/package-lock.json -nt node/node_modules/.package-lock.json ]]; then
  echo "==> compat: npm ci (node/)"
  (cd node && npm ci --no-audit --no-fund --loglevel=error)
fi
