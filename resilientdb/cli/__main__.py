"""``python -m resilientdb.cli``: the same as the ``resilientdb`` command."""

import sys

from . import main

sys.exit(main())
