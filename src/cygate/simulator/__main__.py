"""``python -m cygate.simulator --port N`` (same as ``cygate processor-sim``)."""

from __future__ import annotations

import sys

from cygate.simulator.processor import main

if __name__ == "__main__":
    sys.exit(main())
