#!/bin/sh
# "Compiles" tool.sh: stamps the version in. The object is kept in the cache dir
# ($3): a build whose source did not change reuses it (and says so on stderr).
set -e
version="$1"; out="$2"; cache="$3"
sum=$(cat tool.sh | sha256sum | cut -d' ' -f1)
obj="$cache/tool-$sum-$version.o"
if [ -f "$obj" ]; then
    echo "build: reusing $obj" >&2
else
    sed "s/@VERSION@/$version/" tool.sh > "$obj.tmp" && mv "$obj.tmp" "$obj"
    echo "build: compiled $obj" >&2
fi
cp "$obj" "$out/tool"
