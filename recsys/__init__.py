"""recsys: the library behind the seven pipeline stages (see docs/pipeline.md, "Architecture").

Stage modules in `stages/` only read their params, call functions here and write outputs;
everything they compute lives in this package, one concern per module. Importing it first
pins the BLAS kernel (`recsys.blas`), so results are the same on every x86-64 CPU, and
starts OpenBLAS with one thread, the only one any BLAS call here uses.
"""

from recsys.blas import one_blas_thread, pin_kernel

pin_kernel()
one_blas_thread()
