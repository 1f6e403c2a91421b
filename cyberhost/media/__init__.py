"""The media room: every file the project reads or writes as media, and every atomic file write.

* :mod:`.video` - PyAV decoding: probing, whole or streamed reads, data prep's fixed-rate
  :class:`FrameReader`, in-memory shard segments, remuxing;
* :mod:`.audio` - audio decoding and resampling (:func:`read_audio` for what networks and
  metrics hear, :func:`read_aligned_audio` for data prep, :class:`AudioFileTrack` for muxing);
* :mod:`.writer` - the one H.264 + AAC writer, :class:`VideoWriter`;
* :mod:`.files` - the one atomic file write, :func:`atomic_file`;
* :mod:`.keypoints` - the whole-body keypoint backends (MediaPipe holistic, rtmlib) in the schema's layout.

``av`` is imported here and nowhere else in the package or in ``data_prep``; data prep, the
datasets, training callbacks, checkpoints, generation and evaluation all import this room. It
depends only on :mod:`cyberhost.data.schema` (the keypoint layout).
"""

from cyberhost.media.audio import AudioFileTrack, AudioTrack, read_aligned_audio, read_audio, read_audio_track
from cyberhost.media.files import TMP_SUFFIX, AtomicFile, atomic_copy, atomic_file, atomic_write_bytes
from cyberhost.media.video import (
    FrameReader,
    MediaError,
    MediaInfo,
    copy_head,
    count_frames,
    decode_video_bytes,
    iter_video,
    probe_media,
    read_video,
    video_fps,
)
from cyberhost.media.writer import VideoWriter, encode_video_bytes, even_crop, write_video

__all__ = [
    "TMP_SUFFIX", "AtomicFile", "AudioFileTrack", "AudioTrack", "FrameReader", "MediaError", "MediaInfo", "VideoWriter",
    "atomic_copy", "atomic_file", "atomic_write_bytes", "copy_head", "count_frames", "decode_video_bytes",
    "encode_video_bytes", "even_crop", "iter_video", "probe_media", "read_aligned_audio", "read_audio",
    "read_audio_track", "read_video", "video_fps", "write_video",
]  # fmt: skip
