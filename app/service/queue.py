"""Redis: the queue that says work exists, and the channel that announces new versions.

Redis is a notification path only: the ledger says what is pending, so every call here may
fail (Redis down) without losing anything; callers log and move on, and the sweep re-sends.
"""

from __future__ import annotations

import contextlib
import logging

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer

from app.core.config import Settings

log = logging.getLogger("unlearnd.queue")
JOB = "worker.jobs.process_pending"


def connect(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)


def queue(settings: Settings, redis: Redis) -> Queue:
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def _queued_flag(settings: Settings) -> str:
    return f"{settings.queue_name}:job-queued"


def notify(settings: Settings, redis: Redis, *, reason: str, force: bool = False) -> bool:
    """Enqueue a 'process pending requests' job unless one is queued and not yet started (it will see
    this request: the ledger, not the job, says what is pending). FORCE enqueues anyway (the sweep: a
    job may be lost with its flag still set). False (logged) if Redis is unreachable."""
    flag = _queued_flag(settings)
    try:
        if not force and not redis.set(flag, reason, nx=True, ex=int(settings.lease_s)):
            return True
        queue(settings, redis).enqueue(JOB, reason, job_timeout=settings.job_timeout, result_ttl=60,
                                       failure_ttl=7 * 86400)
        return True
    except RedisError as e:
        log.warning("could not enqueue (%s); the sweep will", e)
        with contextlib.suppress(RedisError):
            redis.delete(flag)  # else requests would wait for the flag's expiry, not the next request
        return False


def job_started(settings: Settings, redis: Redis) -> None:
    """A job clears the flag before it reads the ledger, so a request that arrives after the read
    enqueues a job of its own."""
    try:
        redis.delete(_queued_flag(settings))
    except RedisError as e:
        log.warning("could not clear the queued flag (%s); it expires by itself", e)


def channel(settings: Settings) -> str:
    return f"{settings.queue_name}:versions"


def announce(settings: Settings, redis: Redis, *, version_id: str) -> None:
    try:
        redis.publish(channel(settings), version_id)
    except RedisError as e:
        log.warning("could not announce version %s (%s); API processes will poll", version_id, e)
