"""`python -m controlplane`: the same as the `controlplane` command."""

import sys

from controlplane.cli import main

sys.exit(main())
