"""`python3 -m wgpy ...` is the `wgpy` command."""

from wgpy.cli.main import main

raise SystemExit(main())
