"""``python -m sharpness.correlate results/NAME/results.json``: see :func:`sharpness.cli.correlate_main`.

Writes ``correlation.md`` to ``results/NAME/`` (``--out DIR``: ``DIR/NAME/``; ``--in-place``: beside the
results file, e.g. to update the committed ``figures/NAME/correlation.md``).

(The library function is :func:`sharpness.correlate`, defined in ``sharpness.correlation``; importing this
shim as a module would shadow it on the package, so only run it with ``-m``.)
"""

import sys

from sharpness.cli import correlate_main

if __name__ == "__main__":
    sys.exit(correlate_main())
