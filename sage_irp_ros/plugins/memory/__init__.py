"""Memory: an experience store of the other plugins' runs, and sleep (consolidation by refinement).

``store.py`` holds the SQLite experience store, ``sleep.py`` the consolidation refinement
(``SleepIRP``) and ``consolidate()``, ``evaluate.py`` the synthetic recurring-places benchmark.
No ROS here (``test/test_lint.py``).
"""
