"""Run royalty: ``python -m royalty`` (settings from the environment, see the README)."""

from royalty.service import main

if __name__ == "__main__":
    main()
