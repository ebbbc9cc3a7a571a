"""Run the command line with ``python -m flywheel``."""

from flywheel.cli import main

main()
