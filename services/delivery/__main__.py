"""Run delivery: ``python -m delivery`` (settings from the environment, see the README)."""

from delivery.app import main

if __name__ == "__main__":
    main()
