"""``python -m custom.tools.bench``."""

from custom.tools.bench.cli import main

main()
