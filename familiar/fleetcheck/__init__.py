"""Fleet truth: ``familiar health`` and ``familiar bench``.

* health (``health.py``, ``probe.py``, ``runtime.py``): every active slot's replicas
  probed at once: reachable, the model served, the runtime's own health endpoint, a
  one-token answer that finished, the server's capacity and load against ``parallel``,
  seats in use from the ledger;
* bench (``bench.py``, ``sweep.py``, ``request.py``): a sweep over concurrency levels
  in the manner of ``vllm bench serve`` while every seat of the deployment is held in
  the ledger; per level pass rate, request/s, output tok/s, TTFT, TPOT, ITL, e2e;
* pure logic, tested without servers: ``stats.py`` (percentiles), ``results.py``
  (levels), ``knee.py`` (the suggested ``parallel``), ``prompts.py``, ``report.py``
  (tables), ``plot.py`` (PNG chart, no plotting library), ``slotsedit.py`` (``--apply``);
  ``saved.py`` keeps runs under ``FAMILIAR_HOME/bench`` for ``--compare``.
"""

from __future__ import annotations

from familiar.fleetcheck.bench import BenchRun, default_levels, parse_levels, run_bench
from familiar.fleetcheck.health import HealthReport, check
from familiar.fleetcheck.knee import Knee, find_knee
from familiar.fleetcheck.probe import Prober, ReplicaHealth
from familiar.fleetcheck.results import Level, Sample, summarize
from familiar.fleetcheck.sweep import Sweep, Target, Workload

__all__ = [
    "BenchRun",
    "HealthReport",
    "Knee",
    "Level",
    "Prober",
    "ReplicaHealth",
    "Sample",
    "Sweep",
    "Target",
    "Workload",
    "check",
    "default_levels",
    "find_knee",
    "parse_levels",
    "run_bench",
    "summarize",
]
