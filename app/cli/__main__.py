"""`python -m app.cli`, the same as `pse-refunds`."""

from app.cli import main

main()
