"""`python -m rtcore.cli`: the same as the `rtcore` command."""

import sys

from rtcore.cli import main

sys.exit(main())
