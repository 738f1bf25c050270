from django.contrib import admin

from .models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "created", "processed_at", "result", "completions")
    list_filter = ("processed_at",)
    search_fields = ("name",)
