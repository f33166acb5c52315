"""Inference: model-server replicas, the router, the autoscaler and its simulator, traffic backends.

The room follows training's split between doing and deciding:

* ``latency`` — the network round trip from each user region to each cloud location (a sourced
  table of published inter-region measurements plus a documented fibre model where only geography
  is known); the router and the autoscaler both price distance with it.
* ``forecast`` — demand ten minutes ahead per user region from the request history.
* ``autoscale`` — the one decision function the live loop and ``spotshift simulate-inference`` both
  call: how many replicas of which market in which location, with its terms and reasons.
* ``simulate`` — replays price history and availability traces against the autoscaler and the
  published baselines (all on-demand, all reserved, spot greedy, SpotHedge-like).
* ``policy`` — the routing rule (SLO filter, 80 % cheapest / 20 % fastest, least outstanding
  requests) per request and as a ``TrafficPolicy`` of weights with reasons; ``router`` and
  ``router_app`` — ``spotshift router``, the reverse proxy that applies it (``pool``: its sharded
  connection pools); ``nginx`` — the same
  policy rendered for nginx; ``mtls`` — the local CA and certificate rotation for router <-> replica
  mutual TLS.

No Dagster here: sensors and jobs wire these functions, they never re-implement them.
"""
