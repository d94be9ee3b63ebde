"""``python -m spaceserve``: start the app that SPACE_TEMPLATE selects."""

from .main import main

main()
