"""`python -m demo`: the simulated business day."""

from demo.day import main

raise SystemExit(main())
