"""``python -m sharpness.train``: see :func:`sharpness.cli.train_main`."""

import sys

from sharpness.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
