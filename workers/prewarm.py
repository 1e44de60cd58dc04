"""Imported by the fork server alone, last in its preload list (`service/pool.py`): runs
`runtime.warm_up()` there, once, after the job-type modules listed before it are loaded.

Every worker forked from the fork server then starts warm, and the warmed pages (reportlab's
modules and fonts, caches) are shared between the workers instead of built again in each
one. Nothing else imports this module: the service process never runs a warm-up.
"""
from __future__ import annotations

from offload.workers import runtime

runtime.warm_up()
