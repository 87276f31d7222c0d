from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"


class SiteAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with core.sites.AdminSite as `admin.site`."""

    default = False  # named in INSTALLED_APPS; "core" itself stays CoreConfig
    default_site = "core.sites.AdminSite"
