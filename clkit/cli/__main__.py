"""``python -m clkit.cli ...`` is ``clkit ...``."""

from clkit.cli import main

main()
