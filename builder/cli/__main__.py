"""`python -m lamina.builder.cli` runs the lamina CLI (as `python -m lamina` does)."""

import sys

from lamina.builder.cli import main

sys.exit(main())
