# shellcheck shell=bash
# Shared helpers for the service scripts in this folder. Sourced, never run.
#
# Conventions every script follows:
#   - human messages go to stderr, machine output (URLs, env lines) to stdout, so
#     `eval "$(scripts/services/up.sh)"` works;
#   - exit 0 = done / running, 1 = failed or not running, 3 = a package is missing and we are not
#     root (the message says what to run);
#   - state and logs live under $KREA_SERVICES_DIR (default: <repo>/.services, git-ignored).

set -euo pipefail

SERVICES_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SERVICES_SCRIPTS/../.." && pwd)"
SERVICES_DIR="${KREA_SERVICES_DIR:-$REPO_ROOT/.services}"
# shellcheck disable=SC2034  # used by the scripts that source this file
START_TIMEOUT="${KREA_SERVICES_START_TIMEOUT:-60}"
EXIT_MISSING_PACKAGE=3

export DEBIAN_FRONTEND=noninteractive
export LC_ALL="${LC_ALL:-C.UTF-8}"

_svc_name="$(basename "$0" .sh)"

log() { printf '[%s] %s\n' "$_svc_name" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$_svc_name" "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

mkdir -p "$SERVICES_DIR"

# with_lock NAME CMD...: run CMD holding an exclusive lock, so that parallel callers (pytest-xdist
# workers, two terminals) never start the same service twice or run apt-get at the same time.
with_lock() {
    local name="$1"
    shift
    mkdir -p "$SERVICES_DIR/locks"
    (
        flock -w 600 9 || die "timed out waiting for the $name lock ($SERVICES_DIR/locks/$name.lock)"
        "$@"
    ) 9>"$SERVICES_DIR/locks/$name.lock"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_until SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds.
wait_until() {
    local limit="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "gave up after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# pid_alive PIDFILE: true when the pid file names a live process.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(head -n1 "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# The Python that has the project's test dependencies (moto, s3fs...): the caller's choice
# (the pytest fixtures pass sys.executable), else the repository's venv, else python3.
pick_python() {
    if [ -n "${KREA_PYTHON:-}" ]; then
        echo "$KREA_PYTHON"
    elif [ -x "$REPO_ROOT/.venv/bin/python" ]; then
        echo "$REPO_ROOT/.venv/bin/python"
    else
        command -v python3 || die "no python3 found; set KREA_PYTHON to the interpreter with the test dependencies"
    fi
}

_apt_install_locked() {
    local apt_log="$SERVICES_DIR/logs/apt.log"
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    log "apt-get install $* (log: $apt_log)"
    if apt-get install "${opts[@]}" "$@" >>"$apt_log" 2>&1; then
        return 0
    fi
    log "install failed without fresh package lists; running apt-get update"
    apt-get update -q -o DPkg::Lock::Timeout=300 >>"$apt_log" 2>&1 ||
        { tail -n 20 "$apt_log" >&2; die "apt-get update failed (see $apt_log)"; }
    apt-get install "${opts[@]}" "$@" >>"$apt_log" 2>&1 ||
        { tail -n 30 "$apt_log" >&2; die "apt-get install $* failed (see $apt_log)"; }
}

# apt_install PKG...: install Debian packages (root only). Tries without `apt-get update` first
# (fast when the lists are fresh), then updates once and retries. Output goes to a log file.
apt_install() {
    local apt_log="$SERVICES_DIR/logs/apt.log"
    mkdir -p "$SERVICES_DIR/logs"
    if ! is_root; then
        log "missing Debian packages: $*"
        log "install them with:  sudo apt-get update && sudo apt-get install -y --no-install-recommends $*"
        exit "$EXIT_MISSING_PACKAGE"
    fi
    with_lock apt _apt_install_locked "$@"
}
