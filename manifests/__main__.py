"""Entry point for ``python -m manifests``."""

import sys

from manifests.cli import main

if __name__ == "__main__":
    sys.exit(main())
