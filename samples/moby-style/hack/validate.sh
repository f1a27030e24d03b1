#!/bin/sh
# Checks every shell file of the given dir parses (`sh -n`), like moby's
# hack/validate scripts run their linters over a bind mount of the sources.
set -e
for f in "$1"/*.sh; do
    sh -n "$f"
    echo "ok $(basename "$f")"
done
