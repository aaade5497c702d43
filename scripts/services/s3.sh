#!/usr/bin/env bash
# A local S3 server for the system tests: moto in server mode (PyPI `moto[server]`), on loopback.
#
# Usage: scripts/services/s3.sh {start|stop|status|env}
#
#   start   start moto on 127.0.0.1:$KREA_TEST_S3_PORT in the background and create the bucket
#           $KREA_TEST_S3_BUCKET; returns at once when both already exist
#   stop    stop the server (its data lives in memory and is gone)
#   status  exit 0 when the server answers and the bucket exists, 1 otherwise
#   env     print `export NAME=value` lines for clients (eval them, or read them)
#
# Environment: KREA_TEST_S3_PORT (default 55433), KREA_TEST_S3_BUCKET (default krea-test),
# KREA_PYTHON (the interpreter that has moto[server]; default <repo>/.venv/bin/python, then
# python3), KREA_SERVICES_DIR (default <repo>/.services).
#
# Clients: s3fs / universal-pathlib honour AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3) through
# botocore, so with the printed env `UPath("s3://krea-test/key")` talks to this server; without the
# env, pass `endpoint_url=...` (plus key/secret) as storage options.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S3_PORT="${KREA_TEST_S3_PORT:-55433}"
S3_BUCKET="${KREA_TEST_S3_BUCKET:-krea-test}"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
S3_STATE="$SERVICES_DIR/s3"
PIDFILE="$S3_STATE/moto.pid"
S3_LOG="$S3_STATE/moto.log"

[[ "$S3_BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "KREA_TEST_S3_BUCKET='$S3_BUCKET' is not a valid bucket name"

# http_status METHOD PATH: the HTTP status code moto answers, using bash's /dev/tcp (no curl on a
# bare CI machine, and starting Python for a health check would cost ~100 ms each time).
http_status() {
    # shellcheck disable=SC2016  # the inner script expands its own positional parameters
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "%s /%s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nContent-Length: 0\r\n\r\n" "$1" "$2" "$0" >&3
        read -r _ code _ <&3 && echo "$code"
    ' "$S3_PORT" "$1" "$2" 2>/dev/null
}

ours_alive() {
    pid_alive "$PIDFILE" && grep -q "moto" "/proc/$(head -n1 "$PIDFILE")/cmdline" 2>/dev/null
}

server_up() { [ "$(http_status GET moto-api/ || true)" = "200" ]; }
bucket_exists() { [ "$(http_status HEAD "$S3_BUCKET" || true)" = "200" ]; }

is_running() { ours_alive && bucket_exists; }

cmd_status() {
    if is_running; then
        log "running on $S3_ENDPOINT (pid $(head -n1 "$PIDFILE")), bucket $S3_BUCKET"
        return 0
    fi
    if ours_alive; then
        log "server running (pid $(head -n1 "$PIDFILE")) but bucket $S3_BUCKET is missing or the port does not answer"
    elif port_open "$S3_PORT"; then
        log "not running; port $S3_PORT is taken by another process"
    else
        log "not running"
    fi
    return 1
}

create_bucket() {
    local code
    code="$(http_status PUT "$S3_BUCKET" || true)"
    case "$code" in
        200 | 409) log "bucket $S3_BUCKET ready" ;;
        *) die "creating bucket $S3_BUCKET failed (HTTP ${code:-no answer}); see $S3_LOG" ;;
    esac
}

start_locked() {
    local py pid import_error
    if ours_alive && server_up; then
        bucket_exists || create_bucket
        log "already running on $S3_ENDPOINT"
        return 0
    fi
    if port_open "$S3_PORT"; then
        die "port $S3_PORT is taken by another process; pick another with KREA_TEST_S3_PORT=<port>"
    fi
    py="$(pick_python)"
    if ! import_error="$("$py" -c 'import moto.server, flask, flask_cors' 2>&1)"; then
        log "$py cannot import moto's server mode: $(printf '%s' "$import_error" | tail -n1)"
        log "install it with:  $py -m pip install 'moto[server]>=5'  (or set KREA_PYTHON to the test venv's python)"
        exit "$EXIT_MISSING_PACKAGE"
    fi
    mkdir -p "$S3_STATE"
    log "starting moto on $S3_ENDPOINT (log: $S3_LOG)"
    # setsid + nohup + all three streams redirected: the server neither holds the caller's
    # terminal or pipes (a pytest subprocess call would otherwise wait for it) nor gets its ^C;
    # 9>&- so that it does not inherit (and hold forever) the start lock.
    printf '\n--- %s start on port %s ---\n' "$(date -Is)" "$S3_PORT" >>"$S3_LOG"
    nohup setsid "$py" -m moto.server -H 127.0.0.1 -p "$S3_PORT" </dev/null >>"$S3_LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    if ! wait_until "$START_TIMEOUT" "moto to answer on $S3_ENDPOINT" server_up; then
        tail -n 20 "$S3_LOG" >&2 || true
        kill "$pid" 2>/dev/null || true
        die "moto did not start (see $S3_LOG)"
    fi
    create_bucket
    log "ready: $S3_ENDPOINT bucket $S3_BUCKET"
}

cmd_start() {
    if is_running; then
        log "already running on $S3_ENDPOINT, bucket $S3_BUCKET"
        return 0
    fi
    with_lock s3 start_locked
}

stop_locked() {
    local pid
    if ! ours_alive; then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    pid="$(head -n1 "$PIDFILE")"
    log "stopping moto (pid $pid)"
    kill "$pid" 2>/dev/null || true
    if ! wait_until 10 "moto to exit" bash -c "! kill -0 $pid 2>/dev/null"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

cmd_stop() { with_lock s3 stop_locked; }

cmd_env() {
    local name value
    for name in KREA_TEST_S3_ENDPOINT KREA_TEST_S3_BUCKET AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 \
        AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION AWS_REGION AWS_EC2_METADATA_DISABLED; do
        case "$name" in
            KREA_TEST_S3_ENDPOINT | AWS_ENDPOINT_URL | AWS_ENDPOINT_URL_S3) value="$S3_ENDPOINT" ;;
            KREA_TEST_S3_BUCKET) value="$S3_BUCKET" ;;
            AWS_ACCESS_KEY_ID | AWS_SECRET_ACCESS_KEY) value="testing" ;;
            AWS_DEFAULT_REGION | AWS_REGION) value="us-east-1" ;;
            # With dummy credentials set botocore never asks the EC2 metadata service; this makes
            # sure of it (that address is off limits here and would only time out).
            AWS_EC2_METADATA_DISABLED) value="true" ;;
        esac
        printf 'export %s=%q\n' "$name" "$value"
    done
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 {start|stop|status|env}" >&2
        exit 2
        ;;
esac
