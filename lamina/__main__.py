"""`python -m lamina` runs the lamina CLI."""

import sys

from lamina.builder.cli import main

sys.exit(main())
