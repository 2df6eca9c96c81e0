"""Entry point of the sample service audited by the code-audit example."""

import logging

log = logging.getLogger(__name__)

BANNER = "TODO and FIXME inside a string are data, so the audit does not count them"


def main() -> int:
    # TODO: read the port from the command line instead of hard-coding it
    port = 8080
    log.info("%s (port %d)", BANNER, port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
