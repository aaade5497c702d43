#!/usr/bin/env bash
# Stop the services that up.sh started. Safe to run when nothing runs.
#
# Usage: scripts/services/down.sh [--purge]
#
#   --purge   also delete their state: the PostgreSQL data directory and the logs under
#             .services/ (the installed Debian packages stay)
#
# Chromium has nothing to stop: each test session launches and closes its own browser.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) die "usage: $0 [--purge]" ;;
esac

bash "$SERVICES_SCRIPTS/s3.sh" stop
if [ "$purge" -eq 1 ]; then
    bash "$SERVICES_SCRIPTS/postgres.sh" destroy
    rm -rf "$SERVICES_DIR/s3" "$SERVICES_DIR/logs" "$SERVICES_DIR/env.sh"
    log "state purged"
else
    bash "$SERVICES_SCRIPTS/postgres.sh" stop
fi
