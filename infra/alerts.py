"""Owner alerts: a Pushover notification when keys are set, else a loud log line."""

from __future__ import annotations

import logging
from typing import Any

from pushover_complete import PushoverAPI

from infra.settings import Settings
from workflows.contract import AlertInput

log = logging.getLogger("bitbuddies.alerts")
TIMEOUT_SECONDS = 10.0


class _PushoverWithTimeout(PushoverAPI):  # type: ignore[misc]
    """pushover_complete posts to a module-level URL with no timeout; give it both."""

    def __init__(self, token: str, base_url: str) -> None:
        super().__init__(token)
        self._base_url = base_url.rstrip("/") + "/"

    def _generic_post(
        self,
        endpoint: str,
        url_parameter: str | None = None,
        payload: dict[str, Any] | None = None,
        session: Any = None,
        files: Any = None,
    ) -> Any:
        import requests
        from pushover_complete.error import BadAPIRequestError

        body = dict(payload or {})
        body["token"] = self.token
        post = session.post if session else requests.post
        response = post(
            self._base_url + endpoint.format(url_parameter),
            data=body,
            files=files,
            timeout=TIMEOUT_SECONDS,
        )
        answer = response.json()
        if answer.get("status") != 1:
            raise BadAPIRequestError(f"{response.status_code}: {answer.get('errors')}")
        return answer


def workflow_link(settings: Settings, workflow_id: str, run_id: str | None = None) -> str:
    """The Temporal UI page of a workflow (of one run, when known): where to look first."""
    base = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
    return f"{base}/workflows/{workflow_id}" + (f"/{run_id}/history" if run_id else "")


def alert_owner(settings: Settings, alert: AlertInput) -> None:
    """Tell the owner about a generation, with who it was for and where to look. Blocks:
    run it in a thread."""
    send_owner_alert(
        settings,
        title=alert.title,
        message=f"{alert.message}\nuser: {alert.user_id}\nworkflow: {alert.workflow_id}",
        url=workflow_link(settings, alert.workflow_id, alert.run_id),
    )


def send_owner_alert(settings: Settings, *, title: str, message: str, url: str) -> None:
    if settings.pushover_token is None or settings.pushover_user is None:
        log.error(
            "ALERT (Pushover not configured: set PUSHOVER_TOKEN and PUSHOVER_USER to get it on"
            " your phone) %s: %s %s",
            title,
            message.replace("\n", " | "),
            url,
        )
        return
    api = _PushoverWithTimeout(
        settings.pushover_token.get_secret_value(), settings.pushover_api_url
    )
    api.send_message(
        settings.pushover_user.get_secret_value(),
        message,
        title=title,
        url=url,
        url_title="Open in Temporal",
        priority=1,
    )
    log.info("alert sent to the owner's phone: %s", title)
