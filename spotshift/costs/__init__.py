"""Cost analytics: the dbt_costs marts on the DuckDB warehouse, the FOCUS 1.2 export, cost reports.

``dbt`` runs the ``dbt_costs`` project; ``marts`` reads the
built marts; ``focus`` validates and exports the FOCUS view; ``report`` renders tables, Markdown and
plots; ``commands`` is the ``spotshift report`` / ``spotshift focus`` command line. Realistic raw
facts for tests and benchmarks are test data: ``tests/fixtures_costs.py``.
"""
