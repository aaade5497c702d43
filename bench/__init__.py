"""krea-dagster benchmarks: ``python -m bench`` (see ``bench/README.md``).

Not part of the test suite; ``tests/test_bench_smoke.py`` runs the smoke mode so the code
cannot rot.
"""
