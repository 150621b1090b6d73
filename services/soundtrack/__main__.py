"""Run soundtrack: ``python -m soundtrack`` (a Faust worker; settings from the environment)."""

import sys

from kit.logs import configure_logging
from soundtrack.broker import quiet_faust_logging


def main() -> None:
    configure_logging("soundtrack")
    quiet_faust_logging()
    from soundtrack.app import app

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
