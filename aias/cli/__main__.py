"""`python -m aias.cli`, the same as the `aias` console script."""

from aias.cli import main

main()
