"""``python -m cxrcluster.bench``: run the benchmark (:func:`cxrcluster.bench.cli.main`).

The command line lives in :mod:`cxrcluster.bench.cli`, not here, so that the
package can re-export :func:`~cxrcluster.bench.cli.main` without importing
this module before ``python -m`` runs it. The clustering child processes are
started the same way (``python -m cxrcluster.bench --cluster-worker <spec>``).
"""

from cxrcluster.bench.cli import main

if __name__ == "__main__":
    main()
