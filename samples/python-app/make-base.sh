#!/bin/sh
# Make the Debian base of this sample: a minbase root filesystem with python3 and the
# app's libraries as Debian packages them (python3-idna, python3-packaging: Debian's
# packages install their distributions' metadata, idna-3.3.egg-info and
# packaging-23.0.dist-info, under /usr/lib/python3/dist-packages, where an SBOM finds
# them), imported into the lamina store as debian-python:bookworm. Needs a Debian
# mirror: $DEBIAN_MIRROR, else the one this host's apt sources name (dev/debian-mirror).
set -eu
mirror=${DEBIAN_MIRROR:-$("$(dirname "$0")/../../dev/debian-mirror")}
lamina=${LAMINA:-lamina}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,python3-idna,python3-packaging,passwd bookworm "$work/rootfs" "$mirror"
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
$lamina import "$work/rootfs.tar" debian-python:bookworm
