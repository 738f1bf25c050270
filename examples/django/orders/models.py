from django.db import models


class Order(models.Model):
    name = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # Set by the Celery task orders.tasks.process_order; null until then.
    processed_at = models.DateTimeField(null=True, blank=True)
    result = models.CharField(max_length=200, null=True, blank=True)

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
        }
