"""The server's checkout follows the release that serves (DESIGN decision 9).

Pure builders and parsers: is the checkout clean, where is it, which shared-service
configs differ between two commits, and the commands that move it. opskit.deploy runs
them through its Runner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# what each shared service's configuration is made of, in the repository; compose's file
# defines all of them
SERVICE_PATHS = {
    "nginx": ("nginx/",),
    "pgbouncer": ("pgbouncer/",),
    "redis": ("redis/",),
    "postgresql": ("postgres/",),
}
STACK_FILES = ("compose/server.yml", "docker-compose.yml")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def status(repo: str) -> list[str]:
    """Tracked files with local changes (untracked files are the operator's: .env, logs)."""
    return ["git", "-C", repo, "status", "--porcelain=v1", "--untracked-files=no"]


def parse_status(text: str) -> list[str]:
    """The changed paths `git status --porcelain` lists."""
    paths = []
    for line in text.splitlines():
        if len(line) > 3:
            path = line[3:]
            paths.append(path.split(" -> ", 1)[-1])
    return paths


def head(repo: str) -> list[str]:
    return ["git", "-C", repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"]


def has_commit(repo: str, commit: str) -> list[str]:
    return ["git", "-C", repo, "cat-file", "-e", f"{check_commit(commit)}^{{commit}}"]


def checkout(repo: str, commit: str) -> list[str]:
    """Move the checkout to `commit` (detached: it names a release, not a branch)."""
    return ["git", "-C", repo, "checkout", "--quiet", "--detach", check_commit(commit)]


def changed(repo: str, old: str, new: str) -> list[str]:
    paths = [p for group in SERVICE_PATHS.values() for p in group] + list(STACK_FILES)
    return ["git", "-C", repo, "diff", "--name-only", check_commit(old), check_commit(new),
            "--", *paths]  # fmt: skip


def check_commit(commit: str) -> str:
    if not COMMIT_RE.match(commit or ""):
        raise ValueError(f"{commit!r} is not a full commit id")
    return commit


@dataclass(frozen=True)
class Changes:
    services: tuple[str, ...]  # shared services whose config changed
    stack: bool  # the compose stack file changed
    paths: tuple[str, ...]

    def describe(self) -> str:
        if not self.paths:
            return "no shared-service config changed"
        parts = []
        if self.services:
            parts.append("configs of " + ", ".join(self.services) + " changed")
        if self.stack:
            parts.append("the stack's compose file changed")
        return "; ".join(parts) + f" ({', '.join(self.paths)})"


def parse_changed(text: str) -> Changes:
    paths = tuple(line.strip() for line in text.splitlines() if line.strip())
    services = tuple(
        name
        for name, prefixes in SERVICE_PATHS.items()
        if any(p.startswith(prefix) for p in paths for prefix in prefixes)
    )
    stack = any(p in STACK_FILES for p in paths)
    return Changes(services, stack, paths)
