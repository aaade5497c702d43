#!/usr/bin/env bash
# Debian's Chromium for the browser tests (driven by the Python `playwright` package with
# executable_path; Playwright's own browser download is never used: there is no network for it).
#
# Usage: scripts/services/chromium.sh {install|check [--render]|path|flags}
#
#   install          apt-get install chromium (+ fonts-liberation, so pages have real text) when
#                    /usr/bin/chromium is missing (root), or say what to run (not root: exit 3)
#   check            exit 0 when the executable runs (`--version`); prints its path on stdout
#   check --render   also render a data: page headless with the offline flags and read its DOM back
#   path             print the executable's path
#   flags            print the headless, offline command-line flags, one per line
#   needs            print the Debian packages to install when Chromium is missing (for up.sh)
#
# Environment: KREA_TEST_CHROMIUM (default /usr/bin/chromium), KREA_SERVICES_DIR.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM="${KREA_TEST_CHROMIUM:-/usr/bin/chromium}"

# Headless and off the network: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this machine's closed network refuses. --no-sandbox because CI
# runs as root; --disable-dev-shm-usage because containers often have a tiny /dev/shm.
FLAGS=(
    --headless
    --no-sandbox
    --disable-gpu
    --disable-quic
    --no-first-run
    --disable-background-networking
    --disable-component-update
    --disable-sync
    --disable-dev-shm-usage
)

cmd_install() {
    if [ -x "$CHROMIUM" ]; then
        log "Chromium found: $CHROMIUM"
        return 0
    fi
    [ "$CHROMIUM" = /usr/bin/chromium ] ||
        die "KREA_TEST_CHROMIUM=$CHROMIUM does not exist (install only knows Debian's /usr/bin/chromium)"
    apt_install chromium fonts-liberation
    [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is missing"
    log "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
}

cmd_check() {
    local version profile out
    if [ ! -x "$CHROMIUM" ]; then
        log "Chromium is not installed ($CHROMIUM missing); run: $0 install"
        return 1
    fi
    version="$("$CHROMIUM" --version 2>/dev/null)" || die "$CHROMIUM --version failed"
    log "$version"
    if [ "${1:-}" = "--render" ]; then
        profile="$(mktemp -d "${TMPDIR:-/tmp}/krea-chromium-check.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$profile'" EXIT
        out="$(timeout 60 "$CHROMIUM" "${FLAGS[@]}" --user-data-dir="$profile" \
            --dump-dom 'data:text/html,<p id="m">krea-chromium-ok</p>' 2>"$profile/stderr.log")" || true
        if [[ "$out" != *krea-chromium-ok* ]]; then
            tail -n 20 "$profile/stderr.log" >&2 || true
            die "headless Chromium did not render a data: page"
        fi
        log "headless render OK"
    fi
    echo "$CHROMIUM"
}

case "${1:-}" in
    install) cmd_install ;;
    check) cmd_check "${2:-}" ;;
    path) echo "$CHROMIUM" ;;
    flags) printf '%s\n' "${FLAGS[@]}" ;;
    needs) [ -x "$CHROMIUM" ] || echo chromium fonts-liberation ;;
    *)
        echo "usage: $0 {install|check [--render]|path|flags}" >&2
        exit 2
        ;;
esac
