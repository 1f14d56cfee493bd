"""``python -m vos.bench --point TASK.json STATUS.json``: the child process that measures one point."""

import sys

from vos.bench.measure import child_main

sys.exit(child_main(sys.argv[1:]))
