"""``python -m tasker``: the package's command line.

    python -m tasker worker --database-url URL --app MODULE:ATTR [options]
    python -m tasker version

See ``python -m tasker worker --help`` and docs/python.md ("Running workers
against PostgreSQL").
"""

import sys
from typing import List, Optional

USAGE = """\
usage: python -m tasker COMMAND [ARGS]

commands:
  worker    run an app's Python handlers against PostgreSQL (see `worker --help`)
  version   print the library's version

Database schema and operations (migrate, status, dlq, ...) are in the `tasker`
command-line tool built with the C library.
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE)
        return 2
    if args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "worker":
        from ._worker import main as worker_main

        return worker_main(rest)
    if command in ("version", "--version"):
        import tasker

        print("tasker %s (library %s)" % (tasker.__version__, tasker.version()))
        return 0
    sys.stderr.write("python -m tasker: error: unknown command %r (see --help)\n" % command)
    return 2


if __name__ == "__main__":
    sys.exit(main())
