"""``python -m bench [--smoke] [--out DIR]``: run every scenario, write the results, print the table."""

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
