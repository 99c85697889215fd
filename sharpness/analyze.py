"""``python -m sharpness.analyze CKPT [CKPT ...]``: see :func:`sharpness.cli.analyze_main`.

(The library function is :func:`sharpness.analyze`, defined in ``sharpness.analysis``; importing this
shim as a module would shadow it on the package, so only run it with ``-m``.)
"""

import sys

from sharpness.cli import analyze_main

if __name__ == "__main__":
    sys.exit(analyze_main())
