"""Recorded Gitea/Plane webhooks (byte-exact files) and helpers to sign new ones."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "integrations"
SECRET = "conveyor-test-secret"
"""The secret every recorded webhook fixture is signed with."""

WEBHOOKS = (
    "gitea-push",
    "gitea-status",
    "gitea-pull_request-opened",
    "gitea-pull_request-closed-merged",
    "plane-issue-created",
    "plane-issue-updated",
)
"""Every recorded webhook: `<name>.json` (body) and `<name>.headers.json`."""

GITEA_SIG = "X-Gitea-Signature"
PLANE_SIG = "X-Plane-Signature"


def source_of(name: str) -> str:
    return name.split("-", 1)[0]


def load(name: str) -> tuple[dict[str, str], bytes]:
    """The recorded headers and the exact body bytes of one webhook."""
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text(encoding="utf-8"))
    return headers, (FIXTURES / f"{name}.json").read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def resigned(
    name: str, payload: Any, *, delivery: str | None = None, **header_overrides: str
) -> tuple[dict[str, str], bytes]:
    """A fixture's headers over a new payload, signed the way its sender signs."""
    headers, _ = load(name)
    source = source_of(name)
    body = json.dumps(payload, indent=2 if source == "gitea" else None).encode()
    headers[GITEA_SIG if source == "gitea" else PLANE_SIG] = sign(body)
    if delivery is not None:
        headers["X-Gitea-Delivery" if source == "gitea" else "X-Plane-Delivery"] = delivery
    headers.update(header_overrides)
    return headers, body


def payload(name: str) -> Any:
    return json.loads(load(name)[1])
