"""Tests of the orders app. They run under pytest (pytest-django, as in CI)
and under Django's own runner (python3 manage.py test), against PostgreSQL
(DATABASE_URL or POSTGRES_*): advisory locks and select_for_update need a
real database. The broker is never contacted: enqueueing and the broker
check are patched."""
import json
import threading
from datetime import timedelta
from unittest import mock

from django.db import OperationalError, connection, transaction
from django.test import TestCase, TransactionTestCase, override_settings
from django.utils import timezone

from orders.models import Order
from orders.tasks import process_order, sweep_unprocessed_orders


class OrdersViewTests(TestCase):
    def post(self, body):
        return self.client.post("/orders/", data=body, content_type="application/json")

    def test_create_enqueues_after_commit(self):
        with mock.patch("orders.views.process_order.delay") as delay:
            with self.captureOnCommitCallbacks(execute=True):
                resp = self.post(json.dumps({"name": "espresso"}))
        self.assertEqual(resp.status_code, 201)
        order = Order.objects.get()
        self.assertEqual(resp.json()["id"], order.pk)
        self.assertIsNone(resp.json()["processed_at"])
        self.assertEqual(resp.json()["completions"], 0)
        delay.assert_called_once_with(order.pk)

    def test_create_survives_a_broker_outage(self):
        with mock.patch("orders.views.process_order.delay", side_effect=OSError("connection refused")):
            with self.captureOnCommitCallbacks(execute=True):
                resp = self.post(json.dumps({"name": "latte"}))
        self.assertEqual(resp.status_code, 201)
        self.assertEqual(Order.objects.count(), 1)

    def test_create_rejects_bad_bodies(self):
        for body in ["not json", json.dumps({}), json.dumps({"name": ""}), json.dumps(["x"]),
                     json.dumps({"name": "x" * 201})]:
            with self.subTest(body=body):
                self.assertEqual(self.post(body).status_code, 400)
        self.assertEqual(Order.objects.count(), 0)

    def test_list(self):
        Order.objects.create(name="a")
        done = Order.objects.create(name="b")
        process_order(done.pk)
        resp = self.client.get("/orders/")
        self.assertEqual(resp.status_code, 200)
        self.assertEqual((resp.json()["total"], resp.json()["unprocessed"]), (2, 1))
        orders = {o["name"]: o for o in resp.json()["orders"]}
        self.assertEqual(set(orders), {"a", "b"})
        self.assertIsNone(orders["a"]["processed_at"])
        self.assertIsNotNone(orders["b"]["processed_at"])
        self.assertTrue(orders["b"]["result"].startswith("sha256:"))
        self.assertEqual((orders["a"]["completions"], orders["b"]["completions"]), (0, 1))

    def test_other_methods(self):
        self.assertEqual(self.client.delete("/orders/").status_code, 405)


class ProcessOrderTests(TestCase):
    def test_processes_once(self):
        order = Order.objects.create(name="flat white")
        result = process_order(order.pk)
        order.refresh_from_db()
        self.assertEqual(order.result, result)
        first = order.processed_at
        self.assertIsNotNone(first)
        self.assertEqual(order.completions, 1)
        # A second delivery of the same message changes nothing.
        self.assertEqual(process_order(order.pk), result)
        order.refresh_from_db()
        self.assertEqual(order.processed_at, first)
        self.assertEqual(order.completions, 1)

    def test_missing_order(self):
        self.assertIsNone(process_order(12345))

    def test_sweep_reenqueues_stale_orders_only(self):
        stale = Order.objects.create(name="old")
        Order.objects.filter(pk=stale.pk).update(created=timezone.now() - timedelta(minutes=5))
        Order.objects.create(name="new")
        done = Order.objects.create(name="done")
        Order.objects.filter(pk=done.pk).update(created=timezone.now() - timedelta(minutes=5))
        process_order(done.pk)
        with mock.patch("orders.tasks.process_order.delay") as delay:
            summary = sweep_unprocessed_orders()
        self.assertEqual(summary, {"unprocessed": 2, "reenqueued": 1})
        delay.assert_called_once_with(stale.pk)


def in_thread(fn):
    """Run fn in a thread of its own, so on a database connection of its
    own (Django's connections are per thread); return the thread, started."""
    def run():
        try:
            fn()
        finally:
            connection.close()
    t = threading.Thread(target=run)
    t.start()
    return t


class ProcessOrderConcurrencyTests(TransactionTestCase):
    """Real transactions: each thread has its own connection."""

    def test_the_work_holds_no_lock_a_migration_waits_for(self):
        # While the task works, ALTER TABLE orders_order (ACCESS EXCLUSIVE)
        # must get the table at once: with a transaction held open through
        # the work, it waited for the task, and every read of the table
        # queued behind it.
        order = Order.objects.create(name="cortado")
        outcome = []

        def take_the_table():
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '2s'")
                    cursor.execute("LOCK TABLE orders_order IN ACCESS EXCLUSIVE MODE")
                outcome.append("locked")
            except OperationalError as err:
                outcome.append(str(err))

        def work(name):
            in_thread(take_the_table).join()
            return "sha256:x"

        with mock.patch("orders.tasks.compute_result", side_effect=work):
            process_order(order.pk)
        self.assertEqual(outcome, ["locked"])
        order.refresh_from_db()
        self.assertEqual((order.result, order.completions), ("sha256:x", 1))

    def test_a_second_delivery_waits_then_does_nothing(self):
        order = Order.objects.create(name="ristretto")
        calls, second = [], []

        def work(name):
            calls.append(name)
            second.append(in_thread(lambda: process_order(order.pk)))
            # The second delivery waits on the order's lock while this one works.
            second[0].join(timeout=0.5)
            self.assertTrue(second[0].is_alive(), "the second delivery did not wait for the first")
            return "sha256:y"

        with mock.patch("orders.tasks.compute_result", side_effect=work):
            process_order(order.pk)
            second[0].join(timeout=10)
        self.assertFalse(second[0].is_alive())
        self.assertEqual(calls, ["ristretto"])
        order.refresh_from_db()
        self.assertEqual((order.result, order.completions), ("sha256:y", 1))


class HealthAndVersionTests(TestCase):
    def test_healthy(self):
        with mock.patch("orders.views.check_broker"):
            resp = self.client.get("/healthz")
        self.assertEqual(resp.status_code, 200)
        self.assertEqual(resp.json(), {"ok": True})

    def test_broker_down(self):
        with mock.patch("orders.views.check_broker", side_effect=ConnectionRefusedError("refused")):
            resp = self.client.get("/healthz")
        self.assertEqual(resp.status_code, 503)
        body = resp.json()
        self.assertFalse(body["ok"])
        self.assertIn("broker", body["failed"])
        self.assertNotIn("database", body["failed"])

    @override_settings(HEALTHZ_FAIL="broken on purpose")
    def test_forced_failure(self):
        with mock.patch("orders.views.check_broker"):
            resp = self.client.get("/healthz")
        self.assertEqual(resp.status_code, 503)
        self.assertEqual(resp.json(), {"ok": False, "failed": {"forced": "HEALTHZ_FAIL: broken on purpose"}})

    @override_settings(APP_VERSION="v42")
    def test_version(self):
        self.assertEqual(self.client.get("/version").json(), {"version": "v42"})
