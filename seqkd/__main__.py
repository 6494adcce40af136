"""`python -m seqkd ...` is the `seqkd` command (e.g. as a `ray job submit` entrypoint)."""

from seqkd.cli import main

raise SystemExit(main())
