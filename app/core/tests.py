"""The app's own tests: `python manage.py test` against the configured PostgreSQL and Redis.

They need a role that may create the test database (the local aiia_dev role does).
"""

from __future__ import annotations

import json
import threading
from unittest import mock

from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.test import Client, SimpleTestCase, TestCase, override_settings

from core import health
from core.models import Note


class HttpsClient(Client):
    """Every request over https, as nginx forwards it: the deployed settings redirect http."""

    def generic(
        self, method, path, data="", content_type="application/octet-stream", secure=False, **extra
    ):
        return super().generic(method, path, data, content_type, True, **extra)


class AppTestCase(TestCase):
    """Runs under any ENVIRONMENT: local, staging or production settings."""

    client_class = HttpsClient


# a loopback port nothing listens on: connections are refused at once
UNREACHABLE_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}


class HealthTests(AppTestCase):
    @classmethod
    def tearDownClass(cls):
        # the probe thread's own connection would keep the test database from being dropped
        health.close_probe_connection()
        super().tearDownClass()

    def test_ok_with_database_and_cache(self):
        response = self.client.get("/health/")
        self.assertEqual(response.status_code, 200, response.content)
        body = response.json()
        self.assertEqual(body["status"], "ok")
        self.assertTrue(body["checks"]["database"]["ok"])
        self.assertTrue(body["checks"]["cache"]["ok"])
        self.assertTrue(body["version"])
        self.assertIn(body["environment"], ("local", "staging", "production"))
        self.assertEqual(response["Cache-Control"], "no-store")

    @override_settings(ALLOWED_HOSTS=["eduaiia.com"])
    def test_answers_probes_whatever_their_host(self):
        for host in ("127.0.0.1:8000", "localhost", "aiia_django_prod:8000"):
            with self.subTest(host=host):
                response = self.client.get("/health/", HTTP_HOST=host)
                self.assertEqual(response.status_code, 200)
        # ... while every other page still enforces ALLOWED_HOSTS
        self.assertEqual(self.client.get("/api/notes/", HTTP_HOST="localhost").status_code, 400)

    @override_settings(SECURE_SSL_REDIRECT=True)
    def test_plain_http_is_not_redirected(self):
        plain = Client()
        self.assertEqual(plain.get("/health/").status_code, 200)
        self.assertEqual(plain.get("/api/notes/").status_code, 301)

    def test_touches_no_session(self):
        response = self.client.get("/health/")
        self.assertEqual(response.cookies, {})
        self.assertFalse(Session.objects.exists())

    def test_through_the_proxy_only_the_status(self):
        for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"):
            with self.subTest(header=header):
                response = self.client.get("/health/", **{header: "203.0.113.9"})
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.json(), {"status": "ok"})

    @override_settings(CACHES=UNREACHABLE_CACHE)
    def test_through_the_proxy_a_failure_names_nothing(self):
        response = self.client.get("/health/", HTTP_X_FORWARDED_FOR="203.0.113.9")
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json(), {"status": "fail"})
        self.assertNotIn(b"ConnectionError", response.content)

    def test_head_and_other_methods(self):
        self.assertEqual(self.client.head("/health/").status_code, 200)
        response = self.client.post("/health/")
        self.assertEqual(response.status_code, 405)
        self.assertEqual(response["Allow"], "GET, HEAD")

    @override_settings(CACHES=UNREACHABLE_CACHE)
    def test_fails_naming_the_cache_when_redis_is_unreachable(self):
        response = self.client.get("/health/")
        self.assertEqual(response.status_code, 503)
        body = response.json()
        self.assertEqual(body["status"], "fail")
        self.assertFalse(body["checks"]["cache"]["ok"])
        self.assertEqual(body["checks"]["cache"]["error"], "ConnectionError")
        self.assertTrue(body["checks"]["database"]["ok"])

    def test_redact_hides_configured_secrets(self):
        secrets = health.secret_values("db-secret", "redis://u:p%40ss@redis:6379/0", "k" * 50)
        text = health.redact("auth p@ss p%40ss failed for db-secret", secrets)
        self.assertEqual(text, "auth *** *** failed for ***")


class BlockingProbe:
    """A probe that counts its runs and blocks until released."""

    def __init__(self, error: Exception | None = None) -> None:
        self.runs = 0
        self.error = error
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.runs += 1
        self.running.set()
        self.release.wait()
        if self.error is not None:
            raise self.error


class ProbeThreadTests(SimpleTestCase):
    """Overlapping health checks share one database probe; a stuck one times out for all."""

    def test_a_request_during_a_probe_waits_for_its_result(self):
        func = BlockingProbe()
        probe = health.ProbeThread(func, "test-probe", timeout_s=60, fresh_s=0)
        first = probe.join()
        self.assertTrue(func.running.wait(60))
        second = probe.join()
        self.assertIs(second, first)
        func.release.set()
        self.assertIsNone(probe.outcome(first)[1])
        self.assertIsNone(probe.outcome(second)[1])
        self.assertEqual(func.runs, 1)
        # without a fresh period, the next request probes again
        self.assertIsNot(probe.join(), first)

    def test_a_recent_result_is_reused_failure_included(self):
        func = BlockingProbe(error=ConnectionRefusedError("refused"))
        func.release.set()
        probe = health.ProbeThread(func, "test-probe", timeout_s=60, fresh_s=3600)
        first = probe.join()
        self.assertIsInstance(probe.outcome(first)[1], ConnectionRefusedError)
        self.assertIs(probe.join(), first)
        self.assertIsInstance(probe.outcome(probe.join())[1], ConnectionRefusedError)
        self.assertEqual(func.runs, 1)

    def test_a_stuck_probe_is_a_timeout_for_everyone_and_starts_nothing_more(self):
        func = BlockingProbe()
        probe = health.ProbeThread(func, "test-probe", timeout_s=0.05, fresh_s=3600)
        stuck = probe.join()
        try:
            self.assertIsInstance(probe.outcome(stuck)[1], TimeoutError)
            threads = threading.active_count()
            for _ in range(20):
                run = probe.join()
                self.assertIs(run, stuck)
                self.assertIsInstance(probe.outcome(run)[1], TimeoutError)
            self.assertEqual(threading.active_count(), threads)
            self.assertEqual(func.runs, 1)
        finally:
            func.release.set()
        self.assertTrue(stuck.done.wait(60))
        # an answer that came after the deadline is not reused: the next request probes anew
        self.assertIsNot(probe.join(), stuck)


class NoteApiTests(AppTestCase):
    @classmethod
    def setUpTestData(cls):
        cls.admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-1")
        cls.reader = User.objects.create_user("reader", "reader@example.com", "pw-reader-1")
        cls.writer = User.objects.create_user("writer", "writer@example.com", "pw-writer-1")
        cls.writer.user_permissions.add(Permission.objects.get(codename="add_note"))

    def post(self, client: Client, payload, **extra):
        return client.post(
            "/api/notes/", json.dumps(payload), content_type="application/json", **extra
        )

    def test_list_is_public_newest_first_and_bounded(self):
        first = Note.objects.create(title="first")
        second = Note.objects.create(title="second", body="more")
        response = self.client.get("/api/notes/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual([n["id"] for n in response.json()["results"]], [second.pk, first.pk])
        self.assertEqual(len(self.client.get("/api/notes/?limit=1").json()["results"]), 1)
        for bad in ("0", "101", "x"):
            with self.subTest(limit=bad):
                self.assertEqual(self.client.get(f"/api/notes/?limit={bad}").status_code, 400)

    def test_detail(self):
        note = Note.objects.create(title="one", body="text")
        body = self.client.get(f"/api/notes/{note.pk}/").json()
        self.assertEqual((body["title"], body["body"]), ("one", "text"))
        self.assertEqual(self.client.get(f"/api/notes/{note.pk + 1000}/").status_code, 404)
        self.assertEqual(self.client.delete(f"/api/notes/{note.pk}/").status_code, 405)

    def test_post_needs_a_session(self):
        response = self.post(self.client, {"title": "x"})
        self.assertEqual(response.status_code, 403)
        self.assertIn("log in", response.json()["error"])
        self.assertFalse(Note.objects.exists())

    def test_post_needs_the_add_permission(self):
        self.client.force_login(self.reader)
        self.assertEqual(self.post(self.client, {"title": "x"}).status_code, 403)
        self.client.force_login(self.writer)
        self.assertEqual(self.post(self.client, {"title": "x"}).status_code, 201)

    def test_post_needs_the_csrf_token(self):
        client = HttpsClient(enforce_csrf_checks=True, HTTP_ORIGIN="https://testserver")
        client.get("/admin/login/")  # sets the csrftoken cookie, as for a browser
        token = client.cookies["csrftoken"].value
        client.force_login(self.admin)
        refused = self.post(client, {"title": "x"})
        self.assertEqual(refused.status_code, 403)
        self.assertIn("CSRF", refused.json()["error"])
        created = self.post(client, {"title": " hello ", "body": "b"}, HTTP_X_CSRFTOKEN=token)
        self.assertEqual(created.status_code, 201, created.content)
        self.assertEqual(created.json()["title"], "hello")
        self.assertEqual(Note.objects.get().body, "b")

    def test_post_validates(self):
        self.client.force_login(self.admin)
        cases = {
            "no title": ({"body": "x"}, 400),
            "blank title": ({"title": "  "}, 400),
            "long title": ({"title": "x" * 201}, 400),
            "body not text": ({"title": "x", "body": 3}, 400),
            "not an object": (["x"], 400),
        }
        for name, (payload, status) in cases.items():
            with self.subTest(name):
                self.assertEqual(self.post(self.client, payload).status_code, status)
        form = self.client.post("/api/notes/", {"title": "x"})
        self.assertEqual(form.status_code, 415)
        broken = self.client.post("/api/notes/", "{", content_type="application/json")
        self.assertEqual(broken.status_code, 400)
        self.assertFalse(Note.objects.exists())


class AdminTests(AppTestCase):
    def test_login_page_and_notes_admin(self):
        self.assertEqual(self.client.get("/admin/login/").status_code, 200)
        admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-1")
        self.client.force_login(admin)
        Note.objects.create(title="visible in admin")
        page = self.client.get("/admin/core/note/")
        self.assertContains(page, "visible in admin")

    def test_the_index_builds_its_app_list_once_per_request(self):
        clerk = User.objects.create_user("clerk", "clerk@example.com", "pw-clerk-1", is_staff=True)
        self.client.force_login(clerk)
        build = admin.AdminSite._build_app_dict
        with mock.patch.object(
            admin.AdminSite, "_build_app_dict", autospec=True, side_effect=build
        ) as counted:
            page = self.client.get("/admin/")
        self.assertEqual(page.status_code, 200)
        # Django's own site builds it twice: the sidebar's and the page's
        self.assertEqual(counted.call_count, 1)
        self.assertIs(page.context["available_apps"], page.context["app_list"])
        self.assertNotContains(page, "/admin/core/note/")
        # the next request builds its own: what the user may see now, not then
        clerk.user_permissions.add(Permission.objects.get(codename="view_note"))
        self.assertContains(self.client.get("/admin/"), "/admin/core/note/")


class CacheTests(AppTestCase):
    def test_one_redis_client_per_pool_and_threads_work_beside_it(self):
        client = cache._cache.get_client()
        # Django's own backend builds a new one for every call. A boolean: a client's repr
        # carries its password
        same = cache._cache.get_client(write=True) is client
        self.assertTrue(same, "a new Redis client for this call")
        errors = []

        # each thread gets a backend (and a client) of its own from Django's `caches`
        def worker(n):
            try:
                for i in range(50):
                    cache.set(f"cache-test-{n}-{i}", i, 30)
                    if cache.get(f"cache-test-{n}-{i}") != i:
                        errors.append((n, i))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        same = cache._cache.get_client() is client
        self.assertTrue(same, "a new Redis client after the threads")
        cache.delete_many([f"cache-test-{n}-{i}" for n in range(4) for i in range(50)])
