"""Data contract, shard IO and region conditions of preprocessed clips; the datasets that read them.

:mod:`.schema` (every key, dtype and shape of a clip), :mod:`.shards` (its on-disk form) and
:mod:`.regions` are what ``data_prep`` may import besides :mod:`cyberhost.media`, so importing
this package loads only the schema and the shards (the datasets, transforms and conditions import torch).
"""

from cyberhost.data.schema import CLIP_FIELDS, META_FIELDS, validate_clip
from cyberhost.data.shards import ClipShardWriter, decode_clip, iter_clips

__all__ = ["CLIP_FIELDS", "META_FIELDS", "ClipShardWriter", "decode_clip", "iter_clips", "validate_clip"]
