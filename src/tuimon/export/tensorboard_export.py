"""A run as TensorBoard event files: every scalar, readable by TensorBoard's own readers.

Written with TensorBoard's protos (the `tensorboard` package, the `tuimon[tensorboard]` extra;
no torch, no TensorFlow) in the format TensorBoard's own `scalar_pb` writes: one `Event` per
step or `metrics` event of the log (its step, its time as `wall_time`), a value per scalar
tagged with its name (`loss`, `lr/1`, `layer_grad_norms/fc1`, `val_loss`, `bleu`), a float32
tensor with the scalars plugin's metadata on a tag's first value. TensorBoard keeps scalars
as float32, so values are rounded to it (the CSV export is exact); NaN and the infinities
are written as they are (TensorBoard stores them and its charts mark them), a finite value
beyond float32's range becomes an infinity. Records are framed as TFRecords, their
checksums computed a batch at a time (`crc32c.py`).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

from tuimon.errors import UsageError
from tuimon.export.crc32c import crc32c_many, masked
from tuimon.export.scalar_stream import ScalarEvent

EXTRA: Final = "tensorboard"
INSTALL_HINT: Final = f'pip install "tuimon[{EXTRA}]"'
FILE_PREFIX: Final = "events.out.tfevents."  # what TensorBoard looks for in a directory
FILE_VERSION: Final = "brain.Event:2"
WRITER: Final = "tuimon export"
MAX_TAGS = 4096  # as the CSV's columns: a bound a hostile log cannot pass
BATCH_RECORDS = 2048  # records whose checksums are computed together
BATCH_BYTES = 512 << 10


def load_protos() -> Any:
    """TensorBoard's proto modules, or a UsageError naming the extra that installs them."""
    try:
        from tensorboard.compat.proto import (
            event_pb2,
            summary_pb2,
            tensor_pb2,
            tensor_shape_pb2,
            types_pb2,
        )
        from tensorboard.plugins.scalar import metadata
    except ImportError as exc:
        raise UsageError(
            f"--tensorboard needs the tensorboard package ({exc}): {INSTALL_HINT}"
        ) from None

    class Protos:
        Event = event_pb2.Event
        SourceMetadata = event_pb2.SourceMetadata
        Summary = summary_pb2.Summary
        Value = summary_pb2.Summary.Value
        TensorProto = tensor_pb2.TensorProto
        scalar_shape = tensor_shape_pb2.TensorShapeProto()
        DT_FLOAT = types_pb2.DT_FLOAT
        scalar_metadata = metadata.create_summary_metadata(display_name=None, description=None)

    return Protos


def event_file_name(directory: Path, now: float | None = None) -> Path:
    """A new event file's path, named as TensorBoard's writers name them (time, host, pid,
    a counter: the first not taken in `directory`)."""
    when = int(time.time() if now is None else now)
    stem = f"{FILE_PREFIX}{when:010d}.{socket.gethostname()}.{os.getpid()}"
    counter = 0
    while os.path.lexists(path := directory / f"{stem}.{counter}"):
        counter += 1
    return path


class TensorBoardEvents:
    """Scalar events written to `file`, one `add` per ScalarEvent; `finish` writes what is
    batched (the file is the caller's to close)."""

    def __init__(
        self, file: BinaryIO, start_time: Callable[[], float | None], protos: Any | None = None
    ) -> None:
        self._p = protos or load_protos()
        self._file = file
        self._start_time = start_time  # the run's start, known once the log's start is read
        self._started = False
        self._templates: dict[str, bytes] = {}  # per tag: a value's bytes but its float
        self._records: list[bytes] = []
        self._batched = 0
        self._wall_time = 0.0
        self._header_crcs: dict[int, int] = {}
        self.events = 0
        self.values = 0
        self.over_limit = False

    def _start(self) -> None:
        """The file's first record: its version, at the run's start (TensorBoard's
        "relative" time axis counts from the first event's wall time)."""
        self._started = True
        when = self._start_time()
        self._wall_time = time.time() if when is None else when
        self._record(
            self._p.Event(
                wall_time=self._wall_time,
                file_version=FILE_VERSION,
                source_metadata=self._p.SourceMetadata(writer=WRITER),
            ).SerializeToString()
        )

    def add(self, event: ScalarEvent) -> None:
        if not self._started:
            self._start()
        templates = self._templates
        values: list[bytes] = []
        for tag, number in event.scalars.items():
            template = templates.get(tag)
            if template is not None:
                values.append(template + _float32(number))
            elif len(templates) < MAX_TAGS:
                values.append(self._first_value(tag, number))
            else:
                self.over_limit = True
        if not values:
            return
        if event.time is not None:
            self._wall_time = event.time
        summary = b"".join([_VALUE_FIELD + _varint(len(value)) + value for value in values])
        head = self._p.Event(wall_time=self._wall_time, step=event.step).SerializeToString()
        self._record(head + _SUMMARY_FIELD + _varint(len(summary)) + summary)
        self.events += 1
        self.values += len(values)

    def _first_value(self, name: str, number: float) -> bytes:
        """A tag's first value, with the scalars plugin's metadata, built as protos; and the
        tag's template for the values after it: the serialized value without its last 4
        bytes, which are the float (a tensor's `float_val` is the value's last field, as
        protobuf writes fields in number order; checked here, else no template)."""
        p = self._p
        # A name JSON allowed but UTF-8 does not (a lone surrogate): escaped, not refused.
        tag = name.encode("utf-8", "backslashreplace").decode("utf-8")
        probe = p.Value(
            tag=tag,
            tensor=p.TensorProto(dtype=p.DT_FLOAT, tensor_shape=p.scalar_shape, float_val=[1.5]),
        ).SerializeToString()
        if probe.endswith(_float32(1.5)):
            self._templates[name] = probe[:-4]
        value = p.Value(
            tag=tag,
            metadata=p.scalar_metadata,
            tensor=p.TensorProto(
                dtype=p.DT_FLOAT, tensor_shape=p.scalar_shape, float_val=[_as_float32(number)]
            ),
        )
        return bytes(value.SerializeToString())

    def finish(self) -> None:
        if not self._started:
            self._start()
        self._write_batch()
        self._file.flush()

    def _record(self, data: bytes) -> None:
        self._records.append(data)
        self._batched += len(data)
        if len(self._records) >= BATCH_RECORDS or self._batched >= BATCH_BYTES:
            self._write_batch()

    def _write_batch(self) -> None:
        """TFRecord framing: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
        records = self._records
        if not records:
            return
        crcs = crc32c_many(records)
        parts: list[bytes] = []
        for data, crc in zip(records, crcs, strict=True):
            header = struct.pack("<Q", len(data))
            parts += (header, self._header_crc(len(data), header), data, _pack_crc(crc))
        self._file.write(b"".join(parts))
        self._records = []
        self._batched = 0

    def _header_crc(self, length: int, header: bytes) -> bytes:
        crc = self._header_crcs.get(length)
        if crc is None:
            if len(self._header_crcs) > 65536:
                self._header_crcs.clear()
            crc = self._header_crcs[length] = crc32c_many([header])[0]
        return _pack_crc(crc)


# Protobuf's wire format for the two fields assembled here: Summary.value (field 1) and
# Event.summary (field 5), both length-delimited (wire type 2).
_VALUE_FIELD: Final = b"\x0a"
_SUMMARY_FIELD: Final = b"\x2a"
_FLOAT32 = struct.Struct("<f")
_FLOAT32_MAX = 3.4028234663852886e38


def _as_float32(number: float) -> float:
    """A float32 field's value: beyond float32's range is an infinity (not an error)."""
    if number > _FLOAT32_MAX:
        return math.inf
    if number < -_FLOAT32_MAX:
        return -math.inf
    return number


def _float32(number: float) -> bytes:
    return _FLOAT32.pack(_as_float32(number))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pack_crc(crc: int) -> bytes:
    return struct.pack("<I", masked(crc))
