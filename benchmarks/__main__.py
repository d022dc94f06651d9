"""``python -m benchmarks``: run the benchmark (:func:`benchmarks.cli.main`).

The command line lives in :mod:`benchmarks.cli`, not here, so that the
package can re-export :func:`~benchmarks.cli.main` without importing
this module before ``python -m`` runs it. The clustering child processes are
started the same way (``python -m benchmarks --cluster-worker <spec>``).
"""

from benchmarks.cli import main

if __name__ == "__main__":
    main()
