"""``python -m sharpness.run quickstart`` (or ``experiments/NAME.toml``): see :func:`sharpness.cli.run_main`.

Results and figures go to ``results/NAME/`` unless ``--figures DIR`` says otherwise (``--figures figures``
regenerates the committed paper figures).
"""

import sys

from sharpness.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
