"""What the Dockerfile runs: the app SPACE_TEMPLATE selects (see spaceserve.main)."""

from spaceserve.main import main

if __name__ == "__main__":
    main()
