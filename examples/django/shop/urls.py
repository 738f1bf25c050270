from django.contrib import admin
from django.urls import path

from orders import views

urlpatterns = [
    path("orders/", views.orders, name="orders"),
    path("healthz", views.healthz, name="healthz"),
    path("version", views.version, name="version"),
    path("admin/", admin.site.urls),
]
