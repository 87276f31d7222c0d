"""`python -m opskit.age`: the age command line (opskit.age.cli)."""

import sys

from opskit.age.cli import main

sys.exit(main())
