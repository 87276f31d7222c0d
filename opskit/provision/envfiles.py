"""The two env files setup writes: fresh secrets, the operator's answers, never overwritten.

Pure: the example text comes from the server's own checkout, the answers from flags or a
small answers file, and the result goes to the server on stdin (never in argv).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Mapping

from dotenv import dotenv_values

from opskit import settings as settings_mod

PLACEHOLDER = "CHANGE_ME"
# what the operator may answer; everything else comes from the example or is generated
ANSWER_KEYS = (
    "LETSENCRYPT_EMAIL",
    "BACKUP_AGE_RECIPIENT",
    "APP_IMAGE",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "SLACK_WEBHOOK_URL",
    "STATUS_USER",
)
# 48 random bytes: 64 URL-safe characters, beyond every minimum the settings ask
SECRET_BYTES = 48


class AnswersError(ValueError):
    pass


def parse_answers(text: str, source: str = "answers file") -> dict[str, str]:
    """KEY=value lines of the answers file; unknown keys are refused by name."""
    values = {k: (v or "") for k, v in dotenv_values(stream=io.StringIO(text)).items()}
    unknown = sorted(set(values) - set(ANSWER_KEYS))
    if unknown:
        raise AnswersError(
            f"{source}: unknown key(s) {', '.join(unknown)}; setup answers only "
            f"{', '.join(ANSWER_KEYS)}"
        )
    return values


def fill(
    example: str,
    answers: Mapping[str, str],
    generate: Callable[[], str] = lambda: secrets.token_urlsafe(SECRET_BYTES),
) -> tuple[str, list[str]]:
    """The example with answers filled in and each placeholder a fresh secret.

    Returns the text and the generated secrets (for the caller to keep out of output).
    """
    lines, made = [], []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            key = key.strip()
            if key in answers and answers[key] != "":
                value = answers[key]
            elif value.strip() == PLACEHOLDER:
                value = generate()
                made.append(value)
            line = f"{key}={value}"
        lines.append(line)
    return "\n".join(lines) + "\n", made


def problems(text: str, environment: str, path: str) -> list[str]:
    """Every problem opskit.settings finds in an env file's text, one line each."""
    raw = dict(dotenv_values(stream=io.StringIO(text), interpolate=False))
    try:
        settings_mod.validate(raw, environment, text=text)
    except settings_mod.SettingsError as exc:
        return [p.render(path) for p in exc.problems]
    return []


def missing_answers(example: str, answers: Mapping[str, str]) -> list[str]:
    """Placeholders the operator must answer (not secrets we may generate)."""
    need = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "BACKUP_AGE_RECIPIENT" and value.strip() == PLACEHOLDER:
            if not answers.get("BACKUP_AGE_RECIPIENT"):
                need.append(
                    "BACKUP_AGE_RECIPIENT: give the backups' public key with --age-recipient "
                    "age1... (make a key pair on your machine: age-keygen -o backup-key.txt; "
                    "the secret key stays off the server)"
                )
    return need
