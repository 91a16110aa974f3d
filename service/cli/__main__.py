"""`python -m service.cli …` (the tests start servers this way)."""

import sys

from service.cli.commands import main

sys.exit(main())
