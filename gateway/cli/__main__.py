"""`python -m gateway.cli`: how the demo and the tests run `peel` without the console script."""

import sys

from gateway.cli import main

sys.exit(main())
