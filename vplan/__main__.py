"""`python -m vplan ...`: the `vplan` command."""

from vplan.cli import main

main()
