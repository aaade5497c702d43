#!/usr/bin/env bash
# A throwaway PostgreSQL server for the system tests, from Debian's packages.
#
# Usage: scripts/services/postgres.sh {install|start|stop|status|url [DB]|createdb NAME|dropdb NAME|destroy}
#
#   install        apt-get install postgresql when the server binaries are missing (root), or say
#                  what to run (not root: exit 3)
#   start          install if needed, initdb on first use, start on 127.0.0.1:$KREA_TEST_PG_PORT;
#                  returns at once when already running
#   stop           fast shutdown (the data directory is kept; `destroy` removes it)
#   status         exit 0 when running on the expected port, 1 otherwise
#   url [DB]       print the SQLAlchemy URL (database DB, default "postgres")
#   createdb NAME  create database NAME if it does not exist (starts the server), print its URL
#   dropdb NAME    drop database NAME if it exists (WITH (FORCE): open sessions are ended)
#   destroy        stop and delete the data directory
#   needs          print the Debian package to install when the server is missing (for up.sh)
#
# Environment: KREA_TEST_PG_PORT (default 55432), KREA_PG_BIN_DIR (default: the newest
# /usr/lib/postgresql/<ver>/bin that has a server), KREA_SERVICES_DIR (default <repo>/.services).
#
# The server listens on 127.0.0.1 only (no Unix socket), trusts every local TCP connection
# (superuser "postgres", no password), runs with fsync off (the data is disposable) and, when this
# script runs as root, as the "postgres" system user that the Debian package creates: PostgreSQL
# refuses to run as root.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_PORT="${KREA_TEST_PG_PORT:-55432}"
PG_USER=postgres
PG_STATE="$SERVICES_DIR/postgres"
CLUSTER_LINK="$PG_STATE/cluster"

pg_bindir() {
    if [ -n "${KREA_PG_BIN_DIR:-}" ]; then
        echo "$KREA_PG_BIN_DIR"
        return
    fi
    local dir best=""
    for dir in /usr/lib/postgresql/*/bin; do
        # The client package also creates .../bin (psql); a server needs initdb and postgres.
        if [ ! -x "$dir/postgres" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/pg_ctl" ]; then
            continue
        fi
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$dir" | sort -V | tail -n1)" = "$dir" ]; then
            best="$dir"
        fi
    done
    echo "$best"
}

BIN="$(pg_bindir)"

url_for() { echo "postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/${1:-postgres}"; }

# Run a command as the server's owner: the "postgres" user when we are root, else ourselves.
# From inside the cluster directory, since the postgres user may not be allowed into our cwd.
as_owner() {
    if is_root; then
        (cd "$(cluster_dir)" && runuser -u "$PG_USER" -- "$@")
    else
        (cd "$(cluster_dir)" && "$@")
    fi
}

cluster_dir() { readlink -f "$CLUSTER_LINK" 2>/dev/null || echo "$CLUSTER_LINK"; }
data_dir() { echo "$(cluster_dir)/data"; }
server_log() { echo "$(cluster_dir)/postgres.log"; }

cmd_install() {
    if [ -n "$BIN" ]; then
        log "PostgreSQL server found: $BIN"
        return 0
    fi
    apt_install postgresql
    BIN="$(pg_bindir)"
    [ -n "$BIN" ] || die "apt-get installed postgresql but no /usr/lib/postgresql/<ver>/bin/postgres exists"
    log "installed PostgreSQL: $BIN"
}

require_server() {
    [ -n "$BIN" ] && return 0
    log "the PostgreSQL server is not installed (no /usr/lib/postgresql/<ver>/bin/postgres)"
    cmd_install
}

# Create the cluster directory where its owner can reach it. As root it belongs to "postgres",
# which needs to traverse every parent of the repository; when it cannot (a checkout under
# /root, say), the cluster lives under /var/tmp and .services/postgres/cluster links to it.
prepare_cluster_dir() {
    mkdir -p "$PG_STATE"
    [ -e "$CLUSTER_LINK" ] && return 0
    if ! is_root; then
        mkdir -p "$CLUSTER_LINK"
        return 0
    fi
    id "$PG_USER" >/dev/null 2>&1 || die "no '$PG_USER' system user (the Debian postgresql package creates it)"
    if runuser -u "$PG_USER" -- test -x "$PG_STATE"; then
        mkdir -p "$CLUSTER_LINK"
        chown "$PG_USER:$PG_USER" "$CLUSTER_LINK"
        chmod 700 "$CLUSTER_LINK"
    else
        local elsewhere
        elsewhere="/var/tmp/krea-dagster-pg-$(printf '%s' "$PG_STATE" | sha1sum | cut -c1-12)"
        log "user '$PG_USER' cannot reach $PG_STATE; keeping the cluster in $elsewhere"
        mkdir -p "$elsewhere"
        chown "$PG_USER:$PG_USER" "$elsewhere"
        chmod 700 "$elsewhere"
        ln -sfn "$elsewhere" "$CLUSTER_LINK"
    fi
}

init_cluster() {
    local data version
    data="$(data_dir)"
    version="$("$BIN/postgres" --version | awk '{print $3}' | cut -d. -f1)"
    if [ -f "$data/PG_VERSION" ]; then
        [ "$(cat "$data/PG_VERSION")" = "$version" ] && return 0
        log "data directory is from PostgreSQL $(cat "$data/PG_VERSION"), server is $version: re-initialising"
        rm -rf "$data"
    fi
    log "initdb $data (PostgreSQL $version)"
    as_owner "$BIN/initdb" -D "$data" -U "$PG_USER" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        --no-sync >"$(cluster_dir)/initdb.log" 2>&1 ||
        { tail -n 20 "$(cluster_dir)/initdb.log" >&2; die "initdb failed (see $(cluster_dir)/initdb.log)"; }
    as_owner tee -a "$data/postgresql.conf" >/dev/null <<'EOF'

# --- krea-dagster test server (scripts/services/postgres.sh): disposable data, loopback only ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %q%d '
EOF
    as_owner tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# krea-dagster test server: TCP from 127.0.0.1 only, no password. Never expose this server.
# TYPE  DATABASE     USER  ADDRESS       METHOD
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
EOF
}

# The port the postmaster of our data directory listens on, or nothing when it is not running.
running_port() {
    local pidfile
    pidfile="$(data_dir)/postmaster.pid"
    pid_alive "$pidfile" || return 1
    sed -n 4p "$pidfile"
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U "$PG_USER" -t 2; }

is_running() {
    [ -n "$BIN" ] || return 1
    [ "$(running_port 2>/dev/null)" = "$PG_PORT" ] && ready
}

cmd_status() {
    local port
    if is_running; then
        log "running on 127.0.0.1:$PG_PORT (pid $(head -n1 "$(data_dir)/postmaster.pid"), data $(data_dir))"
        return 0
    fi
    if port="$(running_port 2>/dev/null)" && [ "$port" != "$PG_PORT" ]; then
        log "running on port $port, not $PG_PORT (KREA_TEST_PG_PORT changed?)"
    elif port_open "$PG_PORT"; then
        log "not running; port $PG_PORT is taken by another process"
    else
        log "not running"
    fi
    return 1
}

start_locked() {
    local port
    if is_running; then
        log "already running on 127.0.0.1:$PG_PORT"
        return 0
    fi
    if port="$(running_port 2>/dev/null)"; then
        die "our server is running on port $port, not $PG_PORT: run '$0 stop' first"
    fi
    if port_open "$PG_PORT"; then
        die "port $PG_PORT is taken by another process; pick another with KREA_TEST_PG_PORT=<port>"
    fi
    prepare_cluster_dir
    init_cluster
    log "starting on 127.0.0.1:$PG_PORT (log: $(server_log))"
    # 9>&-: the server must not inherit (and hold forever) the start lock's descriptor.
    if ! as_owner "$BIN/pg_ctl" -D "$(data_dir)" -l "$(server_log)" -o "-p $PG_PORT" \
        -w -t "$START_TIMEOUT" start >/dev/null 9>&-; then
        tail -n 20 "$(server_log)" >&2 || true
        die "pg_ctl start failed (see $(server_log))"
    fi
    wait_until "$START_TIMEOUT" "PostgreSQL to accept connections on 127.0.0.1:$PG_PORT" ready ||
        die "PostgreSQL did not become ready (see $(server_log))"
    log "ready: $(url_for)"
}

cmd_start() {
    # Fast path without the lock: nothing to do when it already runs.
    if is_running; then
        log "already running on 127.0.0.1:$PG_PORT"
        return 0
    fi
    require_server
    with_lock postgres start_locked
}

stop_locked() {
    if [ -z "$BIN" ] || ! running_port >/dev/null 2>&1; then
        log "not running"
        return 0
    fi
    log "stopping (data kept in $(data_dir))"
    as_owner "$BIN/pg_ctl" -D "$(data_dir)" -m fast -w -t "$START_TIMEOUT" stop >/dev/null
}

cmd_stop() { with_lock postgres stop_locked; }

destroy_locked() {
    stop_locked
    local target
    target="$(cluster_dir)"
    rm -rf "$target"
    [ -L "$CLUSTER_LINK" ] && rm -f "$CLUSTER_LINK"
    log "deleted $target"
}

cmd_destroy() { with_lock postgres destroy_locked; }

psql_admin() {
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

valid_db_name() {
    [[ "$1" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "database name '$1' must match [a-z_][a-z0-9_]* (max 63 chars)"
}

cmd_createdb() {
    local name="${1:-}"
    [ -n "$name" ] || die "usage: $0 createdb NAME"
    valid_db_name "$name"
    cmd_start
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" = "1" ]; then
        log "database $name already exists"
    else
        psql_admin -c "CREATE DATABASE \"$name\""
        log "created database $name"
    fi
    url_for "$name"
}

cmd_dropdb() {
    local name="${1:-}"
    [ -n "$name" ] || die "usage: $0 dropdb NAME"
    valid_db_name "$name"
    is_running || die "not running"
    psql_admin -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)"
    log "dropped database $name (if it existed)"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) url_for "${2:-postgres}" ;;
    createdb) cmd_createdb "${2:-}" ;;
    dropdb) cmd_dropdb "${2:-}" ;;
    destroy) cmd_destroy ;;
    needs) [ -n "$BIN" ] || echo postgresql ;;
    *)
        echo "usage: $0 {install|start|stop|status|url [DB]|createdb NAME|dropdb NAME|destroy}" >&2
        exit 2
        ;;
esac
