"""`python -m builder.cli` runs the lamina CLI."""

import sys

from builder.cli import main

sys.exit(main())
