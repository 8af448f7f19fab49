"""Compare a sweep's runs as the paper's tables and figures (= python -m adainfer.report).

python scripts/compare.py --experiment adainfer --tag sweep_dir=multirun/2026-01-01/12-00-00
python scripts/compare.py --help
"""

from adainfer.report.cli import main

if __name__ == "__main__":
    main()
