"""``python -m sharpness.figures``: see :func:`sharpness.cli.figures_main`."""

import sys

from sharpness.cli import figures_main

if __name__ == "__main__":
    sys.exit(figures_main())
