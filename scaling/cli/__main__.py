"""`python -m scaling.cli ...` is the same as the `scaling` command."""

import sys

from scaling.cli import main

if __name__ == "__main__":  # spawned worker processes import this module under another name
    sys.exit(main())
