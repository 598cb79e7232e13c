"""``python -m oracd_client.cli``: the same as the ``oracctl`` command."""
import sys

from . import main

sys.exit(main())
