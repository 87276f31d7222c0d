from django.contrib import admin

from core.models import Note


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    list_display = ("title", "created")
    search_fields = ("title", "body")
    date_hierarchy = "created"
