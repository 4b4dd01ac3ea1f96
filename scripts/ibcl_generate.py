"""Generate an IBCL model for a task preference from a finished run, with no training.

    python scripts/ibcl_generate.py --run RUN_DIR --preference 0.2 0.8 --out model.pt [--mode select|sample|mean]
                                    [--pareto A B --plot pareto.png]

Same as ``clkit ibcl-generate``; see ``strategies/_credal_cli.py`` for every option.
"""

from __future__ import annotations

import sys

from clkit.errors import ClkitError
from strategies._credal_cli import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ClkitError as err:
        print(f"ibcl_generate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
