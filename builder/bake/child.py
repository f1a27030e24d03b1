"""`python -m lamina.builder.bake.child ARGS…`: one target's `lamina ARGS…` as a
child of `lamina bake`, made to receive SIGTERM when the bake process dies (so a
killed bake leaves no build running on its own: `lamina build` turns SIGTERM
into a clean stop of the running step)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    expected_parent = int(os.environ.pop("LAMINA_BAKE_PARENT", "0") or 0)
    if expected_parent and os.getppid() != expected_parent:
        return 130  # the bake died before the signal could be armed
    from lamina.builder.cli import main as lamina_main

    return lamina_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
