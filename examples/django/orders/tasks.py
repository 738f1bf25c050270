"""Celery tasks of the orders app."""
import hashlib
import time
from contextlib import contextmanager
from datetime import timedelta

from celery import shared_task
from celery.utils.log import get_task_logger
from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.utils import timezone

from .models import Order

logger = get_task_logger(__name__)

# An order still unprocessed this long after it was created is enqueued again
# by the sweep (its first message was lost: the broker was down when the order
# was created, say).
STALE_AFTER = timedelta(minutes=1)


def compute_result(name):
    """The work an order needs: here, a digest of its name."""
    if settings.ORDER_PROCESSING_SECONDS:
        time.sleep(settings.ORDER_PROCESSING_SECONDS)
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:16]


@contextmanager
def order_lock(order_id):
    """Hold PostgreSQL's session advisory lock on the order: another delivery
    of the same order waits here until this one is done. It locks no table,
    so the task's work never holds a lock that a migration's ALTER TABLE on
    orders_order must wait for (and the requests queued behind that ALTER TABLE
    with it). A worker that dies loses its connection, and the lock with it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [order_id])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [order_id])
        except DatabaseError:
            # The connection is gone, and the lock with it.
            logger.warning("order %s: could not release its lock; its connection is gone", order_id)


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def process_order(order_id):
    """Process one order, at most once: the order's advisory lock keeps a
    second delivery (a redelivery after a lost worker, a re-enqueue by the
    sweep) waiting until the first is done, and an order that already has
    processed_at is left alone. The work runs outside any transaction; its
    result is written in a short one."""
    with order_lock(order_id):
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            logger.warning("order %s does not exist", order_id)
            return None
        if order.processed_at is not None:
            logger.info("order %s was already processed at %s", order_id, order.processed_at.isoformat())
            return order.result
        result = compute_result(order.name)
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            order.result = result
            order.processed_at = timezone.now()
            # Counted with the result, in the same transaction: a run that
            # does not commit (a worker killed mid-task) counts nothing.
            order.completions = (order.completions or 0) + 1
            order.save(update_fields=["result", "processed_at", "completions"])
    logger.info("order %s processed: %s", order_id, order.result)
    return order.result


@shared_task
def sweep_unprocessed_orders():
    """Periodic (celery beat, every SWEEP_INTERVAL seconds): count the orders
    not processed yet, and enqueue again those older than STALE_AFTER."""
    pending = Order.objects.filter(processed_at__isnull=True)
    count = pending.count()
    stale = list(pending.filter(created__lt=timezone.now() - STALE_AFTER).values_list("pk", flat=True)[:100])
    for order_id in stale:
        process_order.delay(order_id)
    logger.info("sweep: %d unprocessed order(s), %d re-enqueued", count, len(stale))
    return {"unprocessed": count, "reenqueued": len(stale)}
