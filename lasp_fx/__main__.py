"""`python -m lasp_fx` runs the command line."""

from lasp_fx.cli import main

main()
