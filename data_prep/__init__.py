"""Data preparation: raw talking videos -> the validated, sharded, resumable clip dataset (``python -m data_prep``).

One module per step (probe, audio, annotate, filters, segment, worker, run, outputs, merge; the
orchestrator is :mod:`data_prep.__main__`). Of the project it imports the schema, media and region
code only: :mod:`cyberhost.data.schema` with its on-disk form :mod:`cyberhost.data.shards`,
:mod:`cyberhost.media` (decoding, audio, keypoint backends, atomic writes) and
:mod:`cyberhost.data.regions` -- never torch, the models, training, inference or evaluation
(``tests/media/test_room.py`` checks it).
"""
