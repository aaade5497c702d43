#!/usr/bin/env bash
# Install (when missing) and start everything the system tests need, then print the environment.
#
# Usage: scripts/services/up.sh [postgres] [s3] [chromium]     (no argument: all three)
#        eval "$(scripts/services/up.sh)"                      (export the env into this shell)
#
# Idempotent and quick when everything already runs (well under 3 s): running services are left
# alone. Missing Debian packages are installed in one apt-get call (root), or the exact command
# is printed (not root, exit 3). Progress goes to stderr; stdout carries only `export NAME=value`
# lines, also written to .services/env.sh for `source .services/env.sh`.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

services=("$@")
[ "${#services[@]}" -gt 0 ] || services=(postgres s3 chromium)
for service in "${services[@]}"; do
    case "$service" in
        postgres | s3 | chromium) ;;
        *) die "unknown service '$service' (expected: postgres s3 chromium)" ;;
    esac
done
wants() {
    local s
    for s in "${services[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

elapsed() { printf '%d.%03ds' $(($1 / 1000)) $(($1 % 1000)); }
now_ms() { date +%s%3N; }
step() {
    local what="$1" t0
    shift
    t0="$(now_ms)"
    "$@"
    log "$what: $(elapsed $(($(now_ms) - t0)))"
}

# One apt-get run for every missing package (dpkg's fixed costs are paid once).
missing=()
wants postgres && read -r -a pkgs <<<"$(bash "$SERVICES_SCRIPTS/postgres.sh" needs)" && missing+=("${pkgs[@]}")
wants chromium && read -r -a pkgs <<<"$(bash "$SERVICES_SCRIPTS/chromium.sh" needs)" && missing+=("${pkgs[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    step "install ${missing[*]}" apt_install "${missing[@]}"
fi

env_lines=()
if wants postgres; then
    step "postgres" bash "$SERVICES_SCRIPTS/postgres.sh" start
    env_lines+=("export KREA_TEST_PG_URL=$(bash "$SERVICES_SCRIPTS/postgres.sh" url)")
    env_lines+=("export KREA_TEST_PG_PORT=${KREA_TEST_PG_PORT:-55432}")
fi
if wants s3; then
    step "s3" bash "$SERVICES_SCRIPTS/s3.sh" start
    mapfile -t -O "${#env_lines[@]}" env_lines < <(bash "$SERVICES_SCRIPTS/s3.sh" env)
fi
if wants chromium; then
    # A render (not just --version) proves the shared libraries and flags work: ~1 s.
    step "chromium" bash "$SERVICES_SCRIPTS/chromium.sh" check --render >/dev/null
    env_lines+=("export KREA_TEST_CHROMIUM=$(bash "$SERVICES_SCRIPTS/chromium.sh" path)")
fi

# Written aside then renamed: parallel callers never leave a half-written file.
printf '%s\n' "${env_lines[@]}" >"$SERVICES_DIR/env.sh.$$"
mv -f "$SERVICES_DIR/env.sh.$$" "$SERVICES_DIR/env.sh"
log "services up; env also in $SERVICES_DIR/env.sh"
printf '%s\n' "${env_lines[@]}"
