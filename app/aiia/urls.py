"""URLs. /health/ is answered by core.health.HealthCheckMiddleware before routing."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("core.urls")),
]

# nginx serves /media/ on servers; runserver needs this in local development only
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
