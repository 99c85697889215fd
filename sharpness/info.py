"""``python -m sharpness.info CKPT``: see :func:`sharpness.cli.info_main`."""

import sys

from sharpness.cli import info_main

if __name__ == "__main__":
    sys.exit(info_main())
