"""``python -m clkit ...`` is ``clkit ...``."""

from clkit.cli import main

main()
