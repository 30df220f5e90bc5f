"""Bytes every task of a Spark job reads (model weights), on classic Spark and on Spark Connect.

Classic Spark ships them as a broadcast variable: once per executor. Spark
Connect has no SparkContext and no broadcasts, so there the bytes travel in
the task's closure (the Python function Spark Connect sends to the server
with the query), up to :data:`INLINE_LIMIT`; larger ones are written once to
shared storage (``$MNIST_SPARK_SCRATCH``, a folder or URI every executor
reaches) and each Python worker reads them once. Either way a task reads
``payload.value`` and the driver calls ``payload.destroy()`` when the job is
done.

Examples
--------
>>> payload = ship(spark, model_bytes)            # doctest: +SKIP
>>> df.mapInArrow(lambda batches: use(payload.value, batches), schema)  # doctest: +SKIP
>>> payload.destroy()                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid

#: Payloads up to this size travel in the closure on Spark Connect; larger ones through
#: $MNIST_SPARK_SCRATCH. Spark Connect takes requests of up to 128 MiB by default
#: (spark.connect.grpc.maxInboundMessageSize). ``$MNIST_SPARK_INLINE_LIMIT`` (bytes) changes it.
INLINE_LIMIT = 64 * 2**20
#: A folder (local on every node, or a URI) for payloads too large to travel inline.
ENV_SCRATCH = "MNIST_SPARK_SCRATCH"
ENV_INLINE_LIMIT = "MNIST_SPARK_INLINE_LIMIT"

#: digest -> bytes read from shared storage in this Python worker (one at a time).
_READ: dict = {}


class Inline:
    """Bytes carried in the closure of the tasks (Spark Connect, small payloads)."""

    def __init__(self, data: bytes):
        self._data = data

    @property
    def value(self) -> bytes:
        return self._data

    def destroy(self) -> None:
        pass


class Staged:
    """Bytes written once to shared storage; each Python worker reads them once (by digest)."""

    def __init__(self, location: str, digest: str):
        self.location = location
        self.digest = digest

    @property
    def value(self) -> bytes:
        data = _READ.get(self.digest)
        if data is None:
            from mnist_spark import storage

            data = storage.read_bytes(self.location)
            if hashlib.sha256(data).hexdigest() != self.digest:
                raise RuntimeError(f"{self.location} changed while a job read it; run the job again")
            _READ.clear()
            _READ[self.digest] = data
        return data

    def destroy(self) -> None:
        from mnist_spark import storage

        with contextlib.suppress(OSError):  # already gone
            storage.delete_file(self.location)


class Broadcast:
    """A classic Spark broadcast variable of the bytes."""

    def __init__(self, broadcast):
        self._broadcast = broadcast

    @property
    def value(self) -> bytes:
        return self._broadcast.value

    def destroy(self) -> None:
        self._broadcast.destroy()


def inline_limit() -> int:
    return int(os.environ.get(ENV_INLINE_LIMIT) or INLINE_LIMIT)


def ship(spark, data: bytes, what: str = "payload"):
    """Make ``data`` readable by every task of the next jobs: see the module's description.

    Raises
    ------
    ValueError
        On Spark Connect, for a payload above :func:`inline_limit` without
        ``$MNIST_SPARK_SCRATCH``: one line with the size and the fix.
    """
    from mnist_spark.session import is_connect

    if not is_connect(spark):
        return Broadcast(spark.sparkContext.broadcast(data))
    if len(data) <= inline_limit():
        return Inline(data)
    scratch = os.environ.get(ENV_SCRATCH)
    if not scratch:
        raise ValueError(
            f"the {what} is {len(data) / 2**20:.0f} MiB, more than the {inline_limit() / 2**20:.0f} MiB that "
            f"travel with a Spark Connect query; set {ENV_SCRATCH} to a folder (or URI) every executor "
            "reaches, where it is written once for the executors to read"
        )
    from mnist_spark import storage

    digest = hashlib.sha256(data).hexdigest()
    location = storage.join(scratch, f"mnist_spark-{what.replace(' ', '_')}-{digest[:16]}-{uuid.uuid4().hex[:8]}.bin")
    storage.write_bytes(location, data)
    return Staged(location, digest)
