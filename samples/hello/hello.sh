#!/bin/sh
echo "$GREETING from lamina, running as $(id -u) in $(pwd)"
