"""The webhook sink: one POST per alert, over httpx (timeouts, connection pool, no redirects).

Why redirects are handled here and not by the client: a POST answered 301/302/303 is re-sent
by most clients as a GET without the body, so the receiver never sees the alert while the
final 200 looks like a delivery; and following ``Location`` to another host hands it the
request's headers, where webhooks carry their credentials. So the client never follows on
its own. A 307/308 (which keep the method and body) is followed when it stays on the same
origin (scheme, host and port), at most ``MAX_REDIRECTS`` times; every other redirect is a
refusal, as is any other 4xx but 408 and 429. A refused alert goes to the dead-letter file
(``refused.py``) and the sink goes on: retrying it would only block the consumer group.

The URL is a credential too (Slack-style hooks put the token in the path), so messages name
the endpoint by its origin only (``endpoint``), and the URL and header values are registered
with the log masking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import msgspec

from pipeline.alert_consumers.refused import DeadLetterFile
from pipeline.alert_consumers.sinks import SinkError
from pipeline.alert_consumers.tail import Event
from pipeline.common.logs import redact, register_secret

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({408, 429})  # plus every 5xx
FOLLOWED_REDIRECTS = frozenset({307, 308})  # method and body kept
MAX_REDIRECTS = 5
MAX_DETAIL = 500  # characters of a refusal's response body kept


@dataclass(frozen=True)
class Refusal:
    """Why the receiver will not take an alert: ``reason`` is ``refused`` (a 4xx) or
    ``redirect`` (a 3xx not followed); retrying would get the same answer."""

    reason: str
    status: int
    detail: str


def endpoint(url: httpx.URL) -> str:
    """``url`` as messages show it: the origin, and ``/***`` for a path or query (which may be
    the credential); never the user info."""
    port = f":{url.port}" if url.port else ""
    hidden = "/***" if url.path not in ("", "/") or url.query else ""
    return f"{url.scheme}://{url.host}{port}{hidden}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _retry_after(response: httpx.Response, cap_s: float) -> float:
    """Seconds a 429/503 asks us to wait (``Retry-After`` in seconds), 0 if none."""
    try:
        return min(float(response.headers.get("Retry-After", "0")), cap_s)
    except ValueError:  # an HTTP date: fall back to our own backoff
        return 0.0


class WebhookSink:
    """POSTs each alert as JSON with ``Idempotency-Key: <event_id>``.

    2xx is delivered. Connection errors, timeouts, 408, 429 and 5xx are retried ``retries``
    times (backoff doubling from ``backoff_s``, or the receiver's ``Retry-After``); then the
    batch fails with ``SinkError`` and nothing is committed. A refused alert goes to
    ``dead_letters`` and the batch goes on; without one, a refusal raises ``SinkError``.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        headers: dict[str, str] | None = None,
        dead_letters: DeadLetterFile | None = None,
    ) -> None:
        register_secret(url)
        for value in (headers or {}).values():
            register_secret(value)
        try:
            self.url = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise SinkError(f"webhook URL is not a URL: {redact(str(exc))}") from exc
        if self.url.scheme not in ("http", "https") or not self.url.host:
            raise SinkError(f"webhook URL must be http(s)://host...: {endpoint(self.url)}")
        self.retries = retries
        self.dead_letters = dead_letters
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        )

    def existing_ids(self) -> Iterable[str]:
        return ()

    def write(self, events: list[Event]) -> int:
        """Deliver each alert in order; return how many were refused and dead-lettered."""
        refused = 0
        for event in events:
            refusal = self._deliver(event)
            if refusal is not None:
                self._set_aside(event, refusal)
                refused += 1
        return refused

    def _set_aside(self, event: Event, refusal: Refusal) -> None:
        where = endpoint(self.url)
        if self.dead_letters is None:
            raise SinkError(f"webhook {where} refused alert {event['event_id']}: {refusal.detail}")
        self.dead_letters.add(
            event,
            reason=refusal.reason,
            status=refusal.status,
            detail=refusal.detail,
            endpoint=where,
        )
        source = event.get("source") or {}
        log.warning(
            "webhook refused an alert; written to the dead-letter file",
            extra={"endpoint": where, "event_id": event["event_id"], "reason": refusal.reason,
                   "status": refusal.status, "detail": refusal.detail,
                   "dead_letter_file": str(self.dead_letters.path),
                   "source": f"{source.get('topic')}[{source.get('partition')}] "
                             f"offset={source.get('offset')}"},
        )  # fmt: skip

    def _deliver(self, event: Event) -> Refusal | None:
        """None once delivered, the refusal if refused; SinkError when retries run out."""
        body = msgspec.json.encode(event)
        headers = {**self.headers, "Idempotency-Key": str(event["event_id"])}
        error = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                response = self._post(body, headers)
            except httpx.HTTPError as exc:  # connect, timeout, protocol
                error = f"{type(exc).__name__}: {redact(str(exc))}"
            else:
                outcome = self._classify(response)
                if outcome is None or isinstance(outcome, Refusal):
                    return outcome
                error, wait = outcome, max(wait, _retry_after(response, 60.0))
            log.warning(
                "webhook attempt failed",
                extra={"endpoint": endpoint(self.url), "event_id": event["event_id"],
                       "attempt": attempt + 1, "error": error},
            )  # fmt: skip
            if attempt < self.retries:
                time.sleep(wait)
        raise SinkError(
            f"webhook {endpoint(self.url)} failed after {self.retries + 1} attempts "
            f"(alert {event['event_id']}): {error}"
        )

    def _classify(self, response: httpx.Response) -> Refusal | str | None:
        """None: delivered; a Refusal; a string: a retryable failure, described."""
        status = response.status_code
        if 200 <= status < 300:
            return None
        if status in RETRIED_STATUS or status >= 500:
            return f"HTTP {status}"
        text = redact(response.text[:MAX_DETAIL])
        if 300 <= status < 400:
            where = response.headers.get("Location", "")
            target = endpoint(response.url.join(where)) if where else "no Location"
            return Refusal("redirect", status, f"HTTP {status} to {target} (not followed)")
        return Refusal("refused", status, f"HTTP {status}: {text}" if text else f"HTTP {status}")

    def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST, following 307/308 on the same origin only; any other answer is returned."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._client.post(url, content=body, headers=headers)
            response.read()
            location = response.headers.get("Location")
            if response.status_code not in FOLLOWED_REDIRECTS or not location:
                return response
            target = response.url.join(location)
            if _origin(target) != _origin(self.url):
                return response  # refused by _classify: the credentials stay here
            url = target
        return response

    def close(self) -> None:
        self._client.close()
        if self.dead_letters is not None:
            self.dead_letters.close()
