"""metrics.jsonl rows, TensorBoard event records (decoded by protobuf), the progress line."""

import io
import json
import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from rope_lab.training import log as train_log


def event_message_class():
  """tensorflow.Event / Summary / Summary.Value, declared here from their field numbers."""
  file = descriptor_pb2.FileDescriptorProto(name="event_for_test.proto", package="t")
  value = file.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=9, label=1)
  value.field.add(name="simple_value", number=2, type=2, label=1)
  summary = file.message_type.add(name="Summary")
  summary.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
  event = file.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=1, label=1)
  event.field.add(name="step", number=2, type=3, label=1)
  event.field.add(name="file_version", number=3, type=9, label=1)
  event.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def read_records(path):
  data = open(path, "rb").read()
  records, offset = [], 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    (length_crc,) = struct.unpack_from("<I", data, offset + 8)
    assert length_crc == train_log._masked_crc(data[offset:offset + 8])
    payload = data[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack_from("<I", data, offset + 12 + length)
    assert payload_crc == train_log._masked_crc(payload)
    records.append(payload)
    offset += 16 + length
  return records


def test_crc32c_matches_the_standard_check_value():
  assert train_log.crc32c(b"123456789") == 0xE3069283


def test_metrics_go_to_jsonl_and_to_tensorboard_events(tmp_path):
  log = train_log.MetricsLog(str(tmp_path), enabled=True, tensorboard=True)
  log.write(3, "train", {"loss": 2.5, "grad_norm": 0.75})
  log.write(4, "eval", {"loss": 2.25})
  log.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["split"], r["loss"]) for r in rows] == [(3, "train", 2.5), (4, "eval", 2.25)]

  (event_file,) = (tmp_path / "tensorboard").iterdir()
  event_cls = event_message_class()
  events = [event_cls.FromString(r) for r in read_records(event_file)]
  assert events[0].file_version == "brain.Event:2"
  assert [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events[1:]] == [
      (3, [("train/loss", 2.5), ("train/grad_norm", 0.75)]), (4, [("eval/loss", 2.25)])]


def test_progress_is_plain_lines_off_a_terminal():
  stream = io.StringIO()
  progress = train_log.Progress(100, 0, enabled=True, stream=stream)
  progress.update(10, 2.5, 12345.0)
  progress.message("checkpoint saved at step 10")
  assert stream.getvalue().splitlines()[0].startswith("step 10/100 | loss 2.5000 | 12,345 tok/s | ETA")
  assert "\r" not in stream.getvalue()


def test_disabled_log_writes_nothing(tmp_path):
  log = train_log.MetricsLog(str(tmp_path), enabled=False, tensorboard=True)
  log.write(1, "train", {"loss": 1.0})
  log.close()
  assert list(tmp_path.iterdir()) == []
