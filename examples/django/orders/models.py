from django.db import models


class Order(models.Model):
    name = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # Set by the Celery task orders.tasks.process_order; null until then.
    processed_at = models.DateTimeField(null=True, blank=True)
    result = models.CharField(max_length=200, null=True, blank=True)
    # How many times process_order did the work for this order, counted in
    # the same transaction: 1 once processed, whatever the redeliveries (the
    # end-to-end test, scripts/e2e.sh, checks that it never exceeds 1).
    # Nullable, like every column a release adds: the previous release's
    # containers still insert rows without it during the switch, and a
    # NOT NULL column would fail them (Django sets no database default).
    completions = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return "order %s (%s)" % (self.pk, self.name)

    def as_dict(self):
        return {
            "id": self.pk,
            "name": self.name,
            "created": self.created.isoformat(),
            "processed_at": self.processed_at.isoformat() if self.processed_at else None,
            "result": self.result,
            "completions": self.completions or 0,
        }
