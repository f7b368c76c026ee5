"""How the scheduler process sets Python's cyclic garbage collector.

Every engine step allocates a few objects per scheduled sequence (plan entries, outputs) that die
within the step; with the default thresholds the collector still promotes the ones alive at a
young collection, and every few steps a full collection walks the whole heap: at 1,024 running
sequences that was a 10-50 ms pause inside a step. Freezing what start-up built (modules, config,
servers: it is never garbage) keeps full collections to what requests created, and a larger
young generation lets most per-step objects die by reference count before a collection sees them.
"""

from __future__ import annotations

import gc

# Container allocations (net of frees) between young collections; Python's default is 700.
YOUNG_THRESHOLD = 10_000


def settle_after_startup() -> None:
    """Call once, after imports and start-up objects exist and before serving steps."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
