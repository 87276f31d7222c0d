"""`python -m opskit.deploy`: what scripts/deploy.sh runs."""

from opskit.deploy.cli import main

raise SystemExit(main())
