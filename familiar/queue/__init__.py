"""Translation batches across hosts: a durable NATS JetStream work queue.

``familiar translate --nats URL`` submits one job per article (``submit.py``) and
collects the results; ``familiar worker --nats URL`` runs jobs on its host's fleet
(``worker.py``); finished chunks are shared through a KV bucket (``kvcache.py``). The
stream, buckets and connection live in ``store.py``; job ids and the wire format, pure,
in ``jobs.py``. See docs/QUEUE.md.
"""

from __future__ import annotations

from familiar.queue.jobs import JobMessage, JobOptions, JobResult, job_id, message_id

__all__ = ["JobMessage", "JobOptions", "JobResult", "job_id", "message_id"]
