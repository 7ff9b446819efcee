"""``python -m medcl`` runs the command line."""

import sys

from medcl.cli import main

sys.exit(main())
