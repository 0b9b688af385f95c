from __future__ import annotations

from cygate.cli import main

raise SystemExit(main())
