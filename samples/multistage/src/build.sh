#!/bin/sh
# "Compiles" the sources into one report: the version, a word count, a checksum.
set -e
version="$1"; out="$2"
mkdir -p "$out"
{
    echo "report version $version"
    wc -w words.txt | sed 's/ .*/ words/'
    sha256sum words.txt
} > "$out/report.txt"
