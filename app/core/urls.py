from django.urls import path

from core import views

app_name = "core"

urlpatterns = [
    path("notes/", views.notes, name="notes"),
    path("notes/<int:pk>/", views.note, name="note"),
]
