"""The htmx page's orders: a small table whose rows are published as HTML when they change."""

from django.db import models


class Order(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PREPARING = "preparing", "Preparing"
        SHIPPED = "shipped", "Shipped"
        DELIVERED = "delivered", "Delivered"

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"
