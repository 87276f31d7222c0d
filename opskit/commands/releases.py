"""The releases kept for rollback: image tags per environment, and which to prune."""

from __future__ import annotations

import re
from collections.abc import Sequence

from opskit.environments import IMAGE_REPO, RELEASE_RE, Environment


def release_images(env: Environment) -> list[str]:
    return [
        "docker",
        "image",
        "ls",
        "--format",
        "{{.Tag}}\t{{.ID}}",
        "--filter",
        f"reference={IMAGE_REPO}:{env.name}-*",
    ]


def parse_release_images(env: Environment, text: str) -> list[str]:
    """Release ids that still have an image, oldest first."""
    prefix = f"{env.name}-"
    out = []
    for line in text.splitlines():
        tag_ = line.split("\t", 1)[0]
        if tag_.startswith(prefix) and RELEASE_RE.match(tag_[len(prefix) :]):
            out.append(tag_[len(prefix) :])
    return sorted(set(out))


def untag(env: Environment, release: str) -> list[str]:
    """Drop a release's tag; the layers go only when nothing else uses them."""
    return ["docker", "image", "rm", env.release_image(release)]


def to_prune(
    releases: Sequence[str],
    keep: int,
    protect: Sequence[str],
    served: Sequence[str] | None = None,
) -> list[str]:
    """Releases to untag: all but the newest `keep` that served, and the newest other one.

    `served` (from the deploy log) tells releases that were in service from those that
    never were (failed, interrupted): of those only the newest keeps its image, whose code
    may be needed to reverse its migrations (`fab manage`). `protect` (the serving release
    and the one before it) is never pruned. Without `served`, every release counts.
    """
    ordered = sorted(releases)
    served_set = set(ordered if served is None else served)
    good = [r for r in ordered if r in served_set]
    other = [r for r in ordered if r not in served_set]
    keep_set = set(good[-keep:] if keep > 0 else []) | set(other[-1:]) | set(protect)
    return [r for r in ordered if r not in keep_set]


def initial_release(created: str) -> str:
    """The release id of a container compose started: its creation time, then `initial`."""
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})", created or "")
    stamp = "".join(m.groups()[:3]) + "-" + "".join(m.groups()[3:]) if m else "00000000-000000"
    return f"{stamp}-initial"
