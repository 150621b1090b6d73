"""Run inference: ``python -m inference`` (settings from the environment, see the README)."""

from inference.service import main

if __name__ == "__main__":
    main()
