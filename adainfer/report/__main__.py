"""``python -m adainfer.report``: see :mod:`adainfer.report.cli`."""

from adainfer.report.cli import main

if __name__ == "__main__":
    main()
