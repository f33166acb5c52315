"""spotshift: a cost-aware control plane that moves GPU work to where GPUs are cheapest.

The library is pure Python and never imports Dagster; the Dagster code location in the repo
root (``definitions.py`` with ``assets/``, ``ops/``, ``sensors/``, ``resources/``) wires it.
"""

__version__ = "0.1.0"
