"""lamina as an installed lamina starts: byte-compiled. pip compiles a wheel's modules
when it installs them; an editable checkout is not, and where PYTHONDONTWRITEBYTECODE
is set every `python -m lamina` would compile its ~200 modules again (~70 ms a command)
- a cost no user of an installed lamina pays, and none of the compiled peers has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lamina", "grammar", "store", "builder")


def byte_compile() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGES], check=True,
                   cwd=REPO, stdout=subprocess.DEVNULL)
