"""The seven pipeline stages, one module each, run by dvc.yaml as `python -m stages.<name>`.

`recsys` is imported here, before any stage module imports numpy or scipy: it pins the
BLAS kernel and OpenBLAS's thread pool, which only works before OpenBLAS loads.
"""

import recsys  # noqa: F401
