"""Promotion: a deploy records the image's commit and digest; staging's log names the
digest a push of the same commit to main deploys; `fab releases` shows both."""

from __future__ import annotations

import pytest

from opskit.commands import deploy as cmd
from opskit.deploy import history

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "ghcr.io/acme/app/app@sha256:" + "d" * 64


@pytest.mark.parametrize(
    "image, digests, want",
    [
        pytest.param("ghcr.io/acme/app/app:" + COMMIT, [DIGEST], DIGEST, id="tag"),
        pytest.param("127.0.0.1:5000/aiia/app:v2", ["127.0.0.1:5000/aiia/app@sha256:ab"],
                     "127.0.0.1:5000/aiia/app@sha256:ab", id="registry-with-port"),
        pytest.param("ghcr.io/acme/app/app:x", ["ghcr.io/other/app@sha256:ab"], "",
                     id="other-repository"),
        pytest.param(DIGEST, [], DIGEST, id="already-a-digest"),
    ],
)  # fmt: skip
def test_image_digest(image, digests, want):
    assert cmd.image_digest(image, {"digests": digests}) == want


def test_image_commit_only_takes_a_whole_commit():
    assert cmd.image_commit({"labels": {cmd.LABEL_REVISION: COMMIT}}) == COMMIT
    assert cmd.image_commit({"labels": {cmd.LABEL_REVISION: "unknown"}}) == ""
    assert cmd.image_commit({"labels": {}}) == ""


def _entry(**kw) -> history.Entry:
    base = dict(when="2026-12-03T20:00:00+00:00", env="staging", action="deploy", who="ci",
                result="ok", duration_s=10.0, release="20261203-200000-abc", commit=COMMIT,
                image="ghcr.io/acme/app/app:" + COMMIT, digest=DIGEST)  # fmt: skip
    return history.Entry(**{**base, **kw})


def test_staged_image_is_the_newest_good_deploy_of_the_commit():
    newer = DIGEST[:-1] + "e"
    log = "".join(e.to_line() for e in [
        _entry(),
        _entry(release="20261203-210000-abc", digest=newer),
        _entry(release="20261203-220000-abc", digest=DIGEST[:-1] + "f", result="failed"),
        _entry(env="production", digest=DIGEST[:-1] + "0"),
        _entry(commit="f" * 40, digest=DIGEST[:-1] + "1"),
    ])  # fmt: skip
    found = history.staged_image(history.parse(log), "staging", COMMIT)
    assert found is not None and found.digest == newer
    assert history.staged_image(history.parse(log), "staging", "a" * 40) is None


def test_a_deploy_built_on_the_server_is_never_promoted():
    log = _entry(digest="", image="", ref="staging").to_line()
    assert history.staged_image(history.parse(log), "staging", COMMIT) is None


def test_old_log_lines_without_a_digest_still_parse():
    line = '{"when":"x","env":"staging","action":"deploy","who":"a","result":"ok","duration_s":1}'
    (entry,) = history.parse(line)
    assert entry.digest == ""
