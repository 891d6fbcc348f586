"""A bounded, append-only spool file of raw messages for while the database is away.

Each append is one record of a whole batch: ``magic, count, body length, crc32`` then, per
message, ``qos, topic length, payload length, topic, payload``; it is written, flushed and
fsynced before the caller acknowledges the batch's QoS 1 messages. A record torn by a crash (short
or with a bad CRC) ends the readable part: its messages were never acknowledged, so the broker
sends them again. The spool holds raw messages, not rows, so a replay goes through the same
decode and write path as live traffic and the dedup key absorbs anything written twice.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from ingest._process import RawMessage
from runtime.logs import get_logger

log = get_logger(__name__)

_MAGIC: Final = 0x534C5350  # "SLSP"
_HEAD = struct.Struct("!IIII")  # magic, count, body bytes, crc32 of body
_ITEM = struct.Struct("!BHI")  # qos, topic bytes, payload bytes


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already; the batch was not spooled (and must not be acked)."""

    def __init__(self, path: Path, size: int, max_bytes: int) -> None:
        super().__init__(
            f"spool {path} is full ({size} of {max_bytes} bytes): the database has been away too long; "
            "QoS 1 messages stay unacknowledged at the broker, QoS 0 messages are dropped"
        )
        self.path = path
        self.size = size
        self.max_bytes = max_bytes


class SpoolLocked(Exception):
    """Another live process holds this spool: two writers would erase each other's batches."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"spool {path} is held by another running ingest instance; "
            "give every instance its own client id (the spool is named after it)"
        )
        self.path = path


class Spool:
    """Append batches durably, read them back in order, truncate once replayed.

    The file is held with an exclusive ``flock`` for the spool's lifetime: a second instance
    opening the same path gets :class:`SpoolLocked` instead of truncating batches that the
    first one has spooled and already acknowledged. The lock dies with the process.
    """

    def __init__(self, path: Path, max_bytes: int = 1 << 30) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise SpoolLocked(path) from None
        self._size = os.fstat(self._fd).st_size
        self._messages = -1  # unknown until counted
        self._cut_torn_tail()

    @property
    def size_bytes(self) -> int:
        """Bytes in the spool file."""
        return self._size

    def __len__(self) -> int:
        """Messages in the spool (counted once by reading, then kept up to date)."""
        if self._messages < 0:
            self._messages = sum(len(batch) for _, batch in self._records())
        return self._messages

    def append(self, messages: Sequence[RawMessage]) -> None:
        """Write one batch and fsync it; raises SpoolFull (nothing written) when over the bound."""
        parts: list[bytes] = []
        for topic, payload, qos in messages:
            t = topic.encode()
            parts += (_ITEM.pack(qos, len(t), len(payload)), t, payload)
        body = b"".join(parts)
        record = _HEAD.pack(_MAGIC, len(messages), len(body), zlib.crc32(body)) + body
        if self._size + len(record) > self.max_bytes:
            raise SpoolFull(self.path, self._size, self.max_bytes)
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(record)
        if self._messages >= 0:
            self._messages += len(messages)

    def _cut_torn_tail(self) -> None:
        # A record torn by a crash would hide every record appended after it: cut it off now.
        good = 0
        for end, _batch in self._records():
            good = end
        if good < self._size:
            log.warning("spool_torn_tail_cut", path=str(self.path), bytes=self._size - good)
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
            self._size = good

    def _records(self) -> Iterator[tuple[int, list[RawMessage]]]:
        """(offset after the record, messages) for every whole record, in order."""
        with self.path.open("rb") as f:
            offset = 0
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                magic, count, length, crc = _HEAD.unpack(head)
                body = f.read(length)
                if magic != _MAGIC or len(body) < length or zlib.crc32(body) != crc:
                    # Never acknowledged: the broker delivers its messages again.
                    log.warning("spool_torn_record_ignored", path=str(self.path), offset=offset)
                    return
                offset += _HEAD.size + length
                yield offset, _decode_body(body, count)

    def batches(self) -> Iterator[tuple[int, list[RawMessage]]]:
        """The spooled batches in the order written, each with the offset just after it."""
        return self._records()

    def clear(self) -> None:
        """Empty the spool (after every batch in it was committed)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = 0
        self._messages = 0

    def close(self) -> None:
        """Close the file (its content stays for the next start)."""
        os.close(self._fd)


def _decode_body(body: bytes, count: int) -> list[RawMessage]:
    out: list[RawMessage] = []
    pos = 0
    for _ in range(count):
        qos, tlen, plen = _ITEM.unpack_from(body, pos)
        pos += _ITEM.size
        topic = body[pos : pos + tlen].decode()
        pos += tlen
        out.append(RawMessage(topic, body[pos : pos + plen], qos))
        pos += plen
    return out
