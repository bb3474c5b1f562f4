"""producer: publish inference requests and await their replies.

::

    from producer import Client

    async with Client("amqp://guest:guest@127.0.0.1/") as client:
        outputs = await client.infer("digits", {"input": x}, timeout=1.0)
"""

from producer.client import Client, ClientStats
from producer.jobs import JobEvents, Jobs, JobStatus
from producer.sync import SyncClient

__all__ = ["Client", "ClientStats", "JobEvents", "JobStatus", "Jobs", "SyncClient"]
