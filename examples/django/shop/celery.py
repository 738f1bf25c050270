"""The Celery app: `celery -A shop worker` and `celery -A shop beat`.

Every Celery setting lives in shop/settings.py as CELERY_<NAME> (for example
CELERY_TASK_ACKS_LATE is task_acks_late).
"""
import os
from pathlib import Path

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker's health, for the container's health check: while the worker
# consumes from the broker, it touches this file every 2 seconds; the file is
# removed when the consumer stops (connection lost, shutdown). The check is
# then a stat of the file (see compose.yaml), where `celery inspect ping`
# would start a Python interpreter and the whole app every few seconds.
HEARTBEAT_FILE = Path(os.environ.get("CELERY_HEARTBEAT_FILE", "/tmp/celery-worker-heartbeat"))
HEARTBEAT_INTERVAL = 2.0


class WorkerHeartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, consumer):
        HEARTBEAT_FILE.touch()
        self.tref = consumer.timer.call_repeatedly(HEARTBEAT_INTERVAL, HEARTBEAT_FILE.touch, priority=10)

    def stop(self, consumer):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        HEARTBEAT_FILE.unlink(missing_ok=True)

    shutdown = stop


app.steps["consumer"].add(WorkerHeartbeat)
