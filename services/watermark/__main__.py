"""Run the watermark service: ``python -m watermark`` (settings from the environment, see the README)."""

from watermark.service import main

if __name__ == "__main__":
    main()
