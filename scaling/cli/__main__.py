"""`python -m scaling.cli ...` is the same as the `scaling` command."""

import sys

from scaling.cli import main

sys.exit(main())
