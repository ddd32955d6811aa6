"""``python -m s1s2_encoders`` is the ``s1s2`` command."""

import sys

from .cli import main

sys.exit(main())
