#!/bin/sh
# Make the Debian base of this sample: a minbase root filesystem with python3-minimal,
# imported into the lamina store as debian-python:bookworm. Needs the Debian mirror.
set -eu
lamina=${LAMINA:-lamina}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3-minimal,passwd bookworm "$work/rootfs" http://deb.debian.org/debian
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
$lamina import "$work/rootfs.tar" debian-python:bookworm
