"""/v1/webhooks: what a caller needs to check the webhooks its jobs send."""

from __future__ import annotations

from fastapi import APIRouter

from jobs.webhooks import WEBHOOKS_OFF, owner_secret
from service.deps import OwnerDep, SettingsDep
from service.problems import Problem, problem_responses
from service.schemas import WebhookSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 403))


@router.get("/secret", response_model=WebhookSecret, responses=problem_responses(404))
def get_secret(settings: SettingsDep, owner: OwnerDep) -> WebhookSecret:
    """The secret that signs the webhooks of the caller's jobs (docs/api.md#webhooks).

    Each API key has its own, derived from the service's master secret: it stays the
    same until the master changes. 404 when the service sends no webhooks.
    """
    if settings.webhook_secret is None:
        raise Problem(404, WEBHOOKS_OFF)
    master = settings.webhook_secret.get_secret_value().encode()
    return WebhookSecret(secret=owner_secret(master, owner))
