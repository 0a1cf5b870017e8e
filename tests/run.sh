#!/usr/bin/env bash
# Run the template's whole test suite on a fresh Debian machine.
# Installs what is missing (redis-server, nginx, chromium, chromium-driver, postgresql) with
# apt-get, makes a virtualenv in .venv-tests, then runs pytest on two workers.
# Extra arguments go to pytest, e.g.: bash tests/run.sh -k e2e
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The PostgreSQL tests start their own server from Debian's binaries (the package may also
# start a cluster on 5432: harmless, the tests never use it).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "Installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv-tests/bin/python ] || python3 -m venv .venv-tests
.venv-tests/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt

set +e
.venv-tests/bin/python -m pytest -n 2 --dist loadgroup "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$status"
