"""The delivered rendition: AAC-LC in fragmented MP4 (CMAF), gapless across segments.

A session is one audio timeline (44.1 kHz samples; the first segment's master starts at 0). Each
segment's rendition is one fMP4 fragment (moof + mdat) of whole AAC frames (1,024 samples), and
every fragment of every session shares one initialisation segment (ftyp + moov, ``init_segment``).
Played in order, the fragments decode to the masters joined sample for sample:

- **The grid.** A fragment's frames continue its predecessor's exactly (``Placement``): the
  fragment starts where the predecessor's ended, so the timeline never jumps and the durations in
  the playlist add up to the timeline, whatever the segments' lengths.
- **Pre-roll from the actual predecessor.** An AAC frame at time p is the transform of the
  samples [p, p + 2048): it overlaps the next frame by half, and the decoder adds the two halves.
  A fragment therefore keeps only frames whose whole window lies in audio that exists when it is
  encoded (its own master and what came before); the last 1,024-2,047 samples of a segment are
  carried by the first frame of the next fragment, which is encoded from the predecessor's
  (watermarked) master tail followed by its own master. The two frames that meet at a join were
  thus computed from the same samples, so the overlap-add cancels as inside one encode. A
  superseded segment's replacement has the same predecessor and joins the same way; its successor
  is encoded from the replacement.
- **Priming.** The first fragment of a session starts one frame before the music (at -1,024):
  that frame holds the encoder's silence, so the first music sample is decoded exactly. The media
  timeline (tfdt) is the session timeline + 1,024, so it starts at 0.

The encoder is FFmpeg's native AAC encoder (through PyAV) at 128 kbit/s; the muxer is FFmpeg's
mp4 muxer in fragmented mode, whose fragment is given the timeline's decode time (tfdt) and
sequence number afterwards.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np

SAMPLE_RATE = 44_100
FRAME = 1024  # samples per AAC-LC frame
WINDOW = 2 * FRAME  # the samples one frame's transform covers
PREROLL = 2 * FRAME  # samples encoded before a fragment's first frame (so the encoder has settled)
LOOKAHEAD = WINDOW  # samples encoded after a fragment's master (see encode_fragment)
BITRATE = 128_000
PRIMING = FRAME  # the session timeline starts this many samples into the media timeline
# FFmpeg's "fast" quantiser search: about 4x the default (twoloop) here, and at 128 kbit/s its
# authors found it sounds better (FFmpeg commit fcb681ac, 2018, made it the default for that reason).
ENCODER_OPTIONS = {"aac_coder": "fast"}
MIME_CODEC = "mp4a.40.2"  # AAC-LC, for the playlist's CODECS attribute


class MediaError(ValueError):
    """Audio that cannot become a rendition (wrong rate or shape, too short)."""


@dataclass(frozen=True)
class Placement:
    """Where one fragment sits on its session's timeline (in samples)."""

    start: int  # the first frame's time (a frame's time is the first sample it presents)
    frames: int
    master_start: int  # where the segment's own master starts
    master_end: int

    @property
    def end(self) -> int:
        """Where the next fragment starts."""
        return self.start + self.frames * FRAME

    @property
    def decode_time(self) -> int:
        """The fragment's tfdt: its start on the media timeline."""
        return self.start + PRIMING

    @property
    def duration_s(self) -> float:
        return self.frames * FRAME / SAMPLE_RATE


def place(samples: int, after: Placement | None = None) -> Placement:
    """The placement of a segment of ``samples`` samples after ``after`` (None: it opens a timeline).
    Frames are kept while their whole window lies inside the audio known so far."""
    start, master_start = (-PRIMING, 0) if after is None else (after.end, after.master_end)
    master_end = master_start + samples
    frames = (master_end - WINDOW - start) // FRAME + 1
    if frames < 1:
        raise MediaError(f"a segment of {samples} samples is too short for a rendition")
    return Placement(start, frames, master_start, master_end)


def context_samples(placement: Placement) -> int:
    """How many samples before its own master a fragment's encode needs (from the predecessor)."""
    return placement.master_start - (placement.start - PREROLL)


def encode_fragment(audio: np.ndarray, placement: Placement, before: np.ndarray | None,
                    sequence: int) -> bytes:
    """The fMP4 fragment (moof + mdat) of a segment: ``audio`` (frames x 2, float, 44.1 kHz) is its
    master, ``before`` the end of its predecessor's master (at least ``context_samples`` long; None
    for a session's first segment: silence), ``sequence`` the fragment's number (mfhd)."""
    if audio.ndim != 2 or audio.shape[1] != 2:
        raise MediaError(f"expected stereo audio (frames x 2), got shape {audio.shape}")
    if len(audio) != placement.master_end - placement.master_start:
        raise MediaError("audio length does not match its placement")
    need = context_samples(placement)
    if before is None:
        context = np.zeros((need, 2), np.float32)
    elif len(before) < need:
        raise MediaError(f"the predecessor's tail has {len(before)} samples; {need} are needed")
    else:
        context = before[len(before) - need:]
    # The encoder looks ahead to choose each frame's window: audio that stopped dead after the
    # master would look like a transient and make it switch the last kept frames to short windows,
    # which the next fragment's frames (encoded knowing the real continuation) would not match.
    # The master's end mirrored is no transient; nothing encoded from it is kept.
    signal = np.concatenate([context, audio, audio[::-1][:LOOKAHEAD]]).astype(np.float32)
    first = placement.start - PREROLL  # the timeline time of signal[0]
    out = io.BytesIO()
    with av.open(out, "w", format="mp4", options={
            "movflags": "empty_moov+default_base_moof+skip_trailer", "frag_duration": "2000000000"}) as muxer:
        stream = muxer.add_stream("aac", rate=SAMPLE_RATE, layout="stereo", options=dict(ENCODER_OPTIONS))
        stream.bit_rate = BITRATE
        stream.codec_context.time_base = Fraction(1, SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal.T), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        kept = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            when = first + int(packet.pts or 0)  # the packet's time on the session timeline
            if when < placement.start or kept == placement.frames:
                continue
            packet.pts = packet.dts = when - placement.start
            packet.stream = stream
            muxer.mux(packet)
            kept += 1
    if kept != placement.frames:
        raise MediaError(f"the encoder gave {kept} of {placement.frames} frames")
    return _retime(_after_init(out.getvalue()), placement.decode_time, sequence)


_INIT: bytes | None = None


def init_segment() -> bytes:
    """The initialisation segment (ftyp + moov) every fragment decodes with (the same bytes always)."""
    global _INIT
    if _INIT is None:
        out = io.BytesIO()
        with av.open(out, "w", format="mp4", options={
                "movflags": "empty_moov+default_base_moof+skip_trailer", "frag_duration": "2000000000"}) as muxer:
            stream = muxer.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
            stream.bit_rate = BITRATE
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 4 * FRAME), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = SAMPLE_RATE, 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                muxer.mux(packet)
        data = out.getvalue()
        _INIT = data[:len(data) - len(_after_init(data))]
    return _INIT


def boxes(data: bytes) -> list[tuple[str, int, int]]:
    """The top-level ISO BMFF boxes: (type, offset, size)."""
    found, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
        if size < 8 or offset + size > len(data):
            raise MediaError(f"malformed box at byte {offset}")
        found.append((kind.decode("latin-1"), offset, size))
        offset += size
    return found


def _after_init(data: bytes) -> bytes:
    """What follows ftyp + moov (the media boxes)."""
    first_media = next(offset for kind, offset, _ in boxes(data) if kind not in ("ftyp", "moov"))
    return data[first_media:]


def _child(data: bytes | bytearray, start: int, end: int, kind: str) -> tuple[int, int]:
    offset = start
    while offset + 8 <= end:
        size, found = struct.unpack_from(">I4s", data, offset)
        if found.decode("latin-1") == kind:
            return offset, size
        offset += size
    raise MediaError(f"no {kind} box")


def _retime(media: bytes, decode_time: int, sequence: int) -> bytes:
    """The fragment with its mfhd sequence number and tfdt decode time set."""
    data = bytearray(media)
    kinds = [kind for kind, _, _ in boxes(media)]
    if kinds != ["moof", "mdat"]:
        raise MediaError(f"expected one moof and one mdat, got {kinds}")
    moof_size = struct.unpack_from(">I", data, 0)[0]
    mfhd, _ = _child(data, 8, moof_size, "mfhd")
    struct.pack_into(">I", data, mfhd + 12, sequence & 0xFFFFFFFF)
    traf, traf_size = _child(data, 8, moof_size, "traf")
    tfdt, _ = _child(data, traf + 8, traf + traf_size, "tfdt")
    if data[tfdt + 8] != 1:
        raise MediaError("expected a version-1 (64-bit) tfdt")
    struct.pack_into(">Q", data, tfdt + 12, decode_time)
    return bytes(data)


def decode(init: bytes, fragments: list[bytes]) -> tuple[np.ndarray, int]:
    """Decode an init segment and fragments as a player does: one decoder, fragments in the order
    given, whatever their timestamps (across a discontinuity the media time may jump back or ahead,
    and a demuxer reading them as one file would drop what overlaps). Returns the audio (frames x 2,
    float32) and the media time of its first sample."""
    decoder: av.AudioCodecContext | None = None
    chunks, first = [], None
    for fragment in fragments:
        with av.open(io.BytesIO(init + fragment), "r", format="mp4") as container:
            stream = container.streams.audio[0]
            if decoder is None:
                decoder = cast(av.AudioCodecContext, av.CodecContext.create(stream.codec_context.name, "r"))
                decoder.extradata = stream.codec_context.extradata
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if first is None:
                    first = int(packet.pts or 0)
                chunks += [frame.to_ndarray().T for frame in decoder.decode(packet)]
    if decoder is not None:
        chunks += [frame.to_ndarray().T for frame in decoder.decode(None)]
    if not chunks:
        raise MediaError("nothing decoded")
    return np.concatenate(chunks).astype(np.float32), int(first or 0)
