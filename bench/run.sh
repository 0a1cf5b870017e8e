#!/usr/bin/env bash
# The benchmark, in one command (see bench/README.md):
#   bash bench/run.sh [--quick] [--runs 3]           both parts: per process, then capacity
#   bash bench/run.sh per-process [bench.py options]  e.g. --systems ours-channels,naive --scenarios idle
#   bash bench/run.sh capacity [capacity.py options]  100,000 streams through nginx, e.g. --streams 20000
# Installs what is missing (redis-server and nginx with apt-get; virtualenvs under bench/build/),
# bakes both modes of the template this script lives in, then runs bench.py pinned to CPU 1 (the
# servers it starts are pinned to CPU 0) and/or capacity.py (nothing pinned: the whole machine).
# Results go to bench/results/.
set -euo pipefail
part=both
case "${1:-}" in
    per-process|capacity) part="$1"; shift ;;
esac
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"  # the template repository is the one this bench lives in
BUILD="$BENCH/build"
mkdir -p "$BUILD"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ "$part" = per-process ] || command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "Installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }

venv() {  # venv NAME REQUIREMENTS...: create or update bench/build/venv-NAME
    local dir="$BUILD/venv-$1"
    shift
    [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
    local reqs=()
    for r in "$@"; do reqs+=(-r "$r"); done
    "$dir/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
}

echo "== virtualenvs and bakes in $BUILD"
venv tools "$BENCH/requirements-tools.txt"
for mode in channels async_view; do
    rm -rf "$BUILD/bake-$mode"
    "$BUILD/venv-tools/bin/cookiecutter" --no-input -f -o "$BUILD/bake-$mode" "$ROOT" \
        sse_mode="$mode" project_name="Bench $mode" project_slug=bench_project >/dev/null
    # Production-like: settings come from the environment bench.py sets, not the dev .env.
    rm -f "$BUILD/bake-$mode/bench_project/.env"
    venv "ours-$mode" "$BUILD/bake-$mode/bench_project/requirements.txt"
    (cd "$BUILD/bake-$mode/bench_project" && DJANGO_SECRET_KEY=bench DJANGO_DEBUG=0 \
        "$BUILD/venv-ours-$mode/bin/python" manage.py migrate -v0)
done
venv naive "$BENCH/naive/requirements.txt"
venv eventstream "$BENCH/eventstream/requirements.txt"
venv starlette "$BENCH/starlette/requirements.txt"

ulimit -n "$(ulimit -Hn)"
if [ "$part" != capacity ]; then
    echo "== per process (load generator on CPU 1, servers on CPU 0)"
    taskset -c 1 "$BUILD/venv-tools/bin/python" "$BENCH/bench.py" --build "$BUILD" "$@"
fi
if [ "$part" != per-process ]; then
    # The deploy guide's kernel settings (section 5): every listen backlog is capped by somaxconn.
    if [ "$(id -u)" -eq 0 ] && [ "$(cat /proc/sys/net/core/somaxconn)" -lt 65535 ]; then
        sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 || true
    fi
    echo "== capacity (100,000 streams through nginx, the whole machine)"
    "$BUILD/venv-tools/bin/python" "$BENCH/capacity.py" --build "$BUILD" "$@"
fi
