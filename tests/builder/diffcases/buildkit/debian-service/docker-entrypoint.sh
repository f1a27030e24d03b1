#!/bin/sh
set -e
# first arg is `-f` or `--some-option`: run the server with it
if [ "${1#-}" != "$1" ]; then
	set -- python3 -m http.server "$@"
fi
exec "$@"
