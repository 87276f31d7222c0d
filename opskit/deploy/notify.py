"""Slack-compatible webhook: one message when a deploy ends, whichever way it ended.

The URL is a secret (whoever holds it can post to the channel): it comes from
SLACK_WEBHOOK_URL, is held as a `Secret` and never printed. A notification that cannot be
delivered is reported as a warning; it never changes the outcome of the deploy.

requests when it is installed (the operator's machine, CI); the standard library's
urllib otherwise (the application image that runs `scripts/deploy.sh` has no requests).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from opskit.shell import Secret

TIMEOUT_S = 5.0


def message(
    *,
    env: str,
    action: str,
    ok: bool,
    who: str,
    release: str,
    source: str,
    seconds: float,
    version: str = "",
    reason: str = "",
    server: str = "",
) -> dict:
    """The webhook body: Slack's `text` field, which Mattermost and others also read."""
    where = f" on {server}" if server else ""
    if ok:
        text = (
            f":white_check_mark: {env} {action} by {who}{where}: release {release} "
            f"({source}) is serving"
            + (f", version {version}" if version else "")
            + f" ({seconds:.0f}s)"
        )
    else:
        text = (
            f":x: {env} {action} by {who}{where} FAILED after {seconds:.0f}s: {reason} "
            f"({source}); the previous release keeps serving"
        )
    return {"text": text}


def send(url: Secret, body: dict, *, timeout: float = TIMEOUT_S) -> str | None:
    """POST `body` as JSON; None when delivered, else what went wrong (URL not included)."""
    data = json.dumps(body).encode()
    try:
        import requests
    except ImportError:
        requests = None
    if requests is not None:
        try:
            response = requests.post(
                url.reveal(),
                data=data,
                timeout=timeout,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException as exc:
            return f"webhook not delivered: {type(exc).__name__}"
        if not 200 <= response.status_code < 300:
            return f"webhook answered HTTP {response.status_code}"
        return None
    # the scheme is http or https: opskit.settings validates SLACK_WEBHOOK_URL
    request = urllib.request.Request(  # noqa: S310
        url.reveal(), data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"webhook not delivered: {type(exc).__name__}"
    return None
