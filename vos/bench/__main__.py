"""``python -m vos.bench --point TASK.json STATUS.json``: the child process that measures one point;
``python -m vos.bench --gemm DEVICE``: the one that measures the machine's matrix-multiply rate."""

import sys

if sys.argv[1:2] == ["--gemm"]:
    from vos.bench.compute import gemm_main

    sys.exit(gemm_main(sys.argv[2:]))

from vos.bench.measure import child_main

sys.exit(child_main(sys.argv[1:]))
