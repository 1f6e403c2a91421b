"""The paper's metrics with a pinned protocol (``cyberhost evaluate``).

See :mod:`cyberhost.evaluation.evaluate` for the runner and the per-metric modules for the protocol;
videos and audio are read through :mod:`cyberhost.media`.
"""
