"""`python -m lmsprint` = the `lmsprint` console script."""

from .cli import main

raise SystemExit(main())
