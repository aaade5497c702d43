"""Webhook delivery: POST the job JSON to ``X-Webhook-URL`` when the job turns terminal.

Krea documents one unsigned POST per terminal job and warns that duplicates can happen; it
documents no retry schedule. The emulator retries a failed delivery (transport error or non-2xx)
up to ``webhook_max_attempts`` times in all, waiting ``webhook_retry_seconds`` and doubling. Fault
knobs: ``webhook_duplicate_rate`` delivers a job twice (the second POST right after the first
one ends) and ``webhook_delay_seconds`` holds every delivery back by that many real seconds.
Requests carry no Authorization header. Deliveries pending at shutdown or at a reset of the
emulator are dropped (a late delivery must not count in the next test's stats).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from krea_dagster.emulator.state import EmulatorState

USER_AGENT = "krea-emulator-webhooks"


class WebhookDispatcher:
    """Turns the state's webhook outbox into delivery tasks on the running event loop."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def drain(self) -> None:
        """Start a delivery task for every job JSON waiting in the outbox."""
        outbox = self.state.outbox
        if not outbox:
            return
        pending, outbox[:] = list(outbox), []
        for url, payload in pending:
            copies = 2 if self.state.faults.webhook_duplicate() else 1
            delay = self.state.faults.webhook_delay()
            task = asyncio.get_running_loop().create_task(
                self._deliver(url, payload, copies, delay, self.state.resets)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        """Deliveries still in flight."""
        return len(self._tasks)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback
            # webhook receivers.
            self._client = httpx.AsyncClient(trust_env=False, headers={"User-Agent": USER_AGENT})
        return self._client

    async def _deliver(
        self, url: str, payload: dict[str, Any], copies: int, delay: float, epoch: int
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(copies):
            await self._post_with_retries(url, payload, epoch)

    async def _post_with_retries(self, url: str, payload: dict[str, Any], epoch: int) -> None:
        config = self.state.config
        for attempt in range(max(1, config.webhook_max_attempts)):
            if attempt:
                await asyncio.sleep(config.webhook_retry_seconds * 2 ** (attempt - 1))
            if self.state.resets != epoch:
                return
            self.state.counters.webhook_attempts += 1
            try:
                response = await self._http().post(
                    url, json=payload, timeout=config.webhook_timeout_seconds
                )
            except httpx.HTTPError:
                continue
            if self.state.resets != epoch:
                return
            if 200 <= response.status_code < 300:
                self.state.counters.webhooks_sent += 1
                return
        self.state.counters.webhooks_failed += 1

    async def close(self) -> None:
        """Cancel pending deliveries and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
