"""``python -m sharpness.correlate figures/NAME/results.json``: see :func:`sharpness.cli.correlate_main`.

(The library function is :func:`sharpness.correlate`, defined in ``sharpness.correlation``; importing this
shim as a module would shadow it on the package, so only run it with ``-m``.)
"""

import sys

from sharpness.cli import correlate_main

if __name__ == "__main__":
    sys.exit(correlate_main())
