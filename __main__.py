"""``python -m isnet``: the ``isnet`` command."""

import sys

from isnet.tools.cli import main

sys.exit(main())
