"""Run soundtrack: ``python -m soundtrack`` (a Faust worker; settings from the environment)."""

import logging
import sys

from kit.logs import configure_logging


def main() -> None:
    configure_logging("soundtrack")
    # Faust's worker leaves the root logger at DEBUG (its --loglevel sets its handler): every
    # debug call in aiokafka and Faust built a record per message (~4% of the worker's time).
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from soundtrack.app import app

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
