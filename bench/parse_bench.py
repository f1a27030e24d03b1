"""Benchmark of grammar.parse: a generated 10,000-line Dockerfile.

Generates a Dockerfile of about 10,000 lines with every instruction, flags,
continuations, exec forms and heredocs, parses it a few times and prints the
best time in seconds and lines per second. Not a test: run it by hand,

    python3 bench/parse_bench.py [LINES]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamina.grammar import dump, parse  # noqa: E402

BLOCKS = [
    "FROM --platform=$BUILDPLATFORM golang:1.22 AS build{n}\n",
    "ARG VERSION{n}=1.{n} DEBUG\n",
    'ENV GOPATH=/go PATH="/go/bin:$PATH" N={n}\n',
    "RUN --mount=type=cache,target=/root/.cache/go-build \\\n"
    "    --mount=type=bind,source=.,target=/src \\\n"
    "    go build -ldflags \"-X main.v=$VERSION{n}\" \\\n"
    "    # a comment inside the continuation\n"
    "    -o /out/app{n} ./cmd/app\n",
    "COPY --from=build{n} --chown=1:1 --chmod=755 --link /out/app{n} /usr/local/bin/\n",
    'COPY ["file {n}.txt", "/dst dir/"]\n',
    "RUN <<EOF\nset -eu\necho building {n}\napk add --no-cache curl\nEOF\n",
    "COPY <<-\"CONF\" /etc/app{n}.conf\n\tkey = value\n\tn = {n}\n\tCONF\n",
    'LABEL org.opencontainers.image.title="app {n}" version={n}\n',
    "EXPOSE 80{n:02d}/tcp 9090/udp\n",
    "HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD curl -f http://localhost/ || exit 1\n",
    'CMD ["/usr/local/bin/app", "--port", "80"]\n',
    "ONBUILD RUN echo triggered {n}\n",
    "WORKDIR /srv/{n}\nUSER 1000:1000\nVOLUME /data{n}\nSTOPSIGNAL SIGTERM\n",
    'SHELL ["/bin/sh", "-c"]\nENTRYPOINT exec app\n\n',
]


def generate(lines: int) -> str:
    out: list[str] = ["# syntax=docker/dockerfile:1\n"]
    count = 1
    n = 0
    while count < lines:
        for block in BLOCKS:
            text = block.format(n=n % 100)
            out.append(text)
            count += text.count("\n")
        n += 1
    return "".join(out)


def main() -> None:
    target = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    text = generate(target)
    lines = text.count("\n")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dockerfile = parse(text, path="bench.Dockerfile")
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    dump(dockerfile)
    dump_time = time.perf_counter() - start
    print(f"lines: {lines}  instructions: {len(dockerfile.instructions)}")
    print(f"parse: {best:.3f} s  ({lines / best:,.0f} lines/s)   dump: {dump_time:.3f} s")


if __name__ == "__main__":
    main()
