"""Dev/test environments that go to sleep when nobody uses them (seed 001, "AI Dev/Test Environment
Cost Governance": downsizing idle notebooks and training environments after 4 hours).

* :mod:`~spotshift.devenvs.env` — the declaration (``spotshift devenvs add``): workspace, command,
  GPU model and count, idle limit, team, policy.
* :mod:`~spotshift.devenvs.runtime` — start the environment's process, observe its activity (CPU
  use of its process group, a heartbeat file its tools may touch, a requests-served counter), and
  act when it has been idle past its limit: ``hibernate`` (workspace delta-synced to the region's
  store and verified there, process stopped, workspace released) or ``cpu`` (the same snapshot,
  then the process restarted without GPUs on a CPU instance). ``resume`` restores the workspace
  byte for byte in the cheapest suitable place and starts the process again.
  The pieces: :mod:`~spotshift.devenvs.state` (the state document), :mod:`~spotshift.devenvs.place`
  (where it runs), :mod:`~spotshift.devenvs.process` (the process group),
  :mod:`~spotshift.devenvs.activity` (idle detection).
* :func:`~spotshift.devenvs.runtime.waste_report` — idle GPU-hours (and dollars) not paid, per team.
"""
