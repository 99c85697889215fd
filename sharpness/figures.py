"""``python -m sharpness.figures``: see :func:`sharpness.cli.figures_main`.

Reads ``figures/NAME/results.json`` (``--figures DIR``) and writes the figures to ``results/NAME/`` (``--out
DIR``), never over the committed figures unless asked (``--in-place`` or ``--out figures``).
"""

import sys

from sharpness.cli import figures_main

if __name__ == "__main__":
    sys.exit(figures_main())
