"""`python -m runed`."""

from runed.main import main

main()
