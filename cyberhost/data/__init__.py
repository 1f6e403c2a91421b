"""Data contract, shard IO and region conditions of preprocessed clips."""

from cyberhost.data.schema import CLIP_FIELDS, META_FIELDS, validate_clip
from cyberhost.data.shards import ClipShardWriter, decode_clip, iter_clips

__all__ = ["CLIP_FIELDS", "META_FIELDS", "ClipShardWriter", "decode_clip", "iter_clips", "validate_clip"]
