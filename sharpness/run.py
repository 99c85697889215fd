"""``python -m sharpness.run``: see :func:`sharpness.cli.run_main`."""

import sys

from sharpness.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
