"""``python -m assemblage_assets.cli``."""

import sys

from assemblage_assets.cli.main import main

sys.exit(main())
