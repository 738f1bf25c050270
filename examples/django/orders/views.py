import json
import logging

from django.conf import settings
from django.db import connection, transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from kombu import Connection

from .models import Order
from .tasks import process_order

logger = logging.getLogger(__name__)

LIST_LIMIT = 100


def enqueue(order_id):
    try:
        process_order.delay(order_id)
    except Exception:  # the broker is down: the periodic sweep enqueues it later
        logger.exception("could not enqueue order %s; the sweep will", order_id)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def orders(request):
    """POST {"name": "..."}: create an order and enqueue its processing.
    GET: the newest orders (100 at most), with processed_at and result, and
    how many there are in all and unprocessed."""
    if request.method == "POST":
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"error": "the body must be JSON"}, status=400)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            return JsonResponse({"error": "name: a string of 1 to 200 characters is required"}, status=400)
        with transaction.atomic():
            order = Order.objects.create(name=name.strip())
            # Enqueue once the row is committed, so the worker finds it.
            transaction.on_commit(lambda: enqueue(order.pk))
        return JsonResponse(order.as_dict(), status=201)
    return JsonResponse({
        "orders": [o.as_dict() for o in Order.objects.all()[:LIST_LIMIT]],
        "total": Order.objects.count(),
        "unprocessed": Order.objects.filter(processed_at__isnull=True).count(),
    })


def check_broker(timeout=2.0):
    """Open (and close) a connection to the broker, or raise."""
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)


@require_GET
def healthz(request):
    """200 {"ok": true} when the database answers a query and the broker
    accepts a connection; 503 {"ok": false, "failed": {...}} otherwise, or
    always when settings.HEALTHZ_FAIL is set (a release broken on purpose)."""
    failed = {}
    if settings.HEALTHZ_FAIL:
        failed["forced"] = "HEALTHZ_FAIL: %s" % settings.HEALTHZ_FAIL
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        failed["database"] = "%s: %s" % (type(exc).__name__, str(exc).strip())
    try:
        check_broker()
    except Exception as exc:
        failed["broker"] = "%s: %s" % (type(exc).__name__, str(exc).strip())
    if failed:
        logger.warning("healthz: %s", failed)
        return JsonResponse({"ok": False, "failed": failed}, status=503)
    return JsonResponse({"ok": True})


@require_GET
def version(request):
    return JsonResponse({"version": settings.APP_VERSION})
