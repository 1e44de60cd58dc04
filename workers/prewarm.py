"""Imported by the fork server alone, last in its preload list (`service/pool.py`): runs
`runtime.warm_up()` there, once, after the job-type modules listed before it are loaded.

Every worker forked from the fork server then starts warm, and the warmed pages (reportlab's
modules and fonts, caches) are shared between the workers instead of built again in each
one. `gc.freeze()` then moves everything loaded so far out of the collector's sight: a
collection in a worker would otherwise write to (and so copy) every shared page holding an
object, which is most of them. Nothing else imports this module: the service process never
runs a warm-up.
"""
from __future__ import annotations

import gc
import sys

from offload.workers import runtime
from offload.workers.registry import DECLARED, Registry

# The job-type modules preloaded before this one are the ones that declared types.
_preloaded = Registry()
_preloaded.load([name for name, module in list(sys.modules.items())
                 if module is not None and vars(module).get(DECLARED)])
runtime.warm_up(_preloaded)
gc.collect()
gc.freeze()  # see the module docstring
