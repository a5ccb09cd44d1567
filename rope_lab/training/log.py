"""What a training run reports: metrics.jsonl, TensorBoard event files, a progress line.

The event files are written by a small TFRecord + protobuf encoder (about fifty lines),
so TensorBoard can read the runs without TensorFlow or tensorboardX installed here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

# ----------------------------------------------------------------------------- TensorBoard


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord files use."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """tensorflow.Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5.

  Summary.value=1 (repeated); Summary.Value: tag=1 (string), simple_value=2 (float).
  """
  event = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    event += _length_delimited(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode())
                          + _varint(2 << 3 | 5) + struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    event += _length_delimited(5, summary)
  return event


def tfrecord(payload: bytes) -> bytes:
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", _masked_crc(length)) + payload
          + struct.pack("<I", _masked_crc(payload)))


class EventWriter:
  """Appends scalar summaries to ``<logdir>/events.out.tfevents.<time>.<host>``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._file.write(tfrecord(encode_event(time.time(), step, scalars=values)))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
  """metrics.jsonl (one JSON object per line, kept across resumes) and TensorBoard.

  A resumed run starts from its checkpoint's step, so rows a previous run logged after
  that step (it died before saving them) are dropped when the log opens: the resumed run
  logs those steps again, and each step appears once. A torn last line (a process killed
  mid-write) is dropped too. Only the primary process writes; the others get a log that
  drops everything.
  """

  def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      keep_rows_up_to(self.path, resume_step)
    self._jsonl = open(self.path, "a") if enabled else None
    self._events = EventWriter(os.path.join(workdir, "tensorboard")) if enabled and tensorboard \
        else None

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": step, "split": split, "time": round(time.time(), 3)}
    row.update({k: float(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      self._events.scalars(step, {f"{split}/{k}": v for k, v in values.items()})

  def close(self) -> None:
    for handle in (self._jsonl, self._events):
      if handle is not None:
        handle.close()


def keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites the metrics file ``path`` without rows after ``step`` or torn lines (atomically)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # empty or torn
    if isinstance(row, dict) and row.get("step", 0) <= step:
      kept.append(line)
  if len(kept) == sum(1 for line in lines if line.strip()):
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in kept))
  os.replace(tmp, path)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """A one-line bar redrawn in place on a terminal; plain lines when not a terminal."""

  def __init__(self, total_steps: int, start_step: int, *, enabled: bool, stream=None):
    self.total = total_steps
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.interactive = enabled and self.stream.isatty()
    self.restart(start_step)

  def restart(self, start_step: int) -> None:
    """ETA counts from here (after a resume or compilation-free setup)."""
    self._start_step = start_step
    self._start_time = time.perf_counter()

  def update(self, step: int, loss: float, tokens_per_second: float) -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self._start_time
    done = step - self._start_step
    eta = (self.total - step) * elapsed / done if done > 0 else float("nan")
    text = (f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_second:,.0f} tok/s | "
            f"ETA {format_duration(eta)}")
    if self.interactive:
      width = 24
      filled = int(width * step / max(self.total, 1))
      self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K")
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line that must stay visible (evaluation, checkpoints), above the bar."""
    if not self.enabled:
      return
    prefix = "\r\x1b[K" if self.interactive else ""
    self.stream.write(prefix + text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.interactive:
      self.stream.write("\n")
      self.stream.flush()
