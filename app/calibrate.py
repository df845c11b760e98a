"""python -m app.calibrate: the command lives with the other entry points (app.cli.calibrate)."""

import sys

from app.cli.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
