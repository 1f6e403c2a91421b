"""Benchmarks, probes and the synthetic-shard writer they share; run from the repository root.

Not part of the installed package: nothing under ``cyberhost/`` or ``data_prep/`` imports from
here. ``python -m benchmarks.<name>`` (and pytest, which puts the root on ``sys.path``) finds it.
"""
