"""Per-client rates of the calls whose cost a client chooses, beside the uploads' own
(upload/admission.py): CreateRequest, which has the event processed again, and ListStatuses,
which counts and reads a page of the status records (REST's /api/status/all up to
LIST_ALL_MAX of them). A client past its rate is refused RESOURCE_EXHAUSTED with a
`google.rpc.RetryInfo` saying when it may call again; other clients are not affected.

And the storage checks of GetStatus (and of a WatchStatus's first answer) for an event still
waiting: past its client's rate a lookup is answered from the status record, not refused (the
result of a runner that does not announce it is then found by a later call, the watch path or
the reconcile).

The client is its API key's owner, or with authentication off its address (api/clients.py).
The counts live in this process: with several servers a client may make the rate on each.
"""

from __future__ import annotations

import collections

from .. import errors
from ..ports import CallBudget
from ..ports import UploadRateLimit as RateLimit

# What CallRates refuses calls for, each counted in `CallRates.refusals`.
RATE_REFUSAL_REASONS = (errors.RequestRateLimited.reason, errors.ListRateLimited.reason)


class CallRates:
    """The per-client rate of CreateRequest, of ListStatuses and of the storage checks of
    lookups (None: no limit)."""

    def __init__(
        self,
        *,
        create_request: RateLimit | None = None,
        list_statuses: RateLimit | None = None,
        result_checks: CallBudget | None = None,
    ) -> None:
        self._create_request = create_request
        self._list_statuses = list_statuses
        self._result_checks = result_checks
        self.refusals: collections.Counter[str] = collections.Counter()
        self.result_checks_skipped = 0

    async def may_check_result(self, client: str) -> bool:
        """Whether a lookup of `client` may check storage for a result now (counted if so)."""
        if self._result_checks is None:
            return True
        if await self._result_checks.take(client):
            return True
        self.result_checks_skipped += 1
        return False

    async def admit_create_request(self, client: str) -> None:
        """Count one CreateRequest of `client`, or raise RequestRateLimited."""
        await self._admit(self._create_request, client, errors.RequestRateLimited)

    async def admit_list(self, client: str) -> None:
        """Count one ListStatuses of `client`, or raise ListRateLimited."""
        await self._admit(self._list_statuses, client, errors.ListRateLimited)

    async def _admit(
        self,
        limit: RateLimit | None,
        client: str,
        error: type[errors.RequestRateLimited | errors.ListRateLimited],
    ) -> None:
        if limit is None:
            return
        wait_s = await limit.admit(client)
        if wait_s is not None:
            self.refusals[error.reason] += 1
            raise error().retry_after(round(wait_s, 3))
