"""`Client`: one typed method per endpoint of Tandem's REST contract, over httpx.

Retries: a request that could not be sent (connection refused, DNS, connect timeout), or that
the server refused for now (429, or 503 while it is busy), is sent again after a backoff that
honours `Retry-After`. Posting observations is retried on any transport error too: a `ts` the
twin already has is counted as a duplicate, not stored again, so a resent batch is harmless.
Creating and deleting a twin are retried only when the request never reached the server.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from tandem_client.results import (
    Drift,
    History,
    HistoryRow,
    IngestResult,
    Parameters,
    Prediction,
    Readiness,
    Twin,
    Version,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_BATCH_ROWS = 5_000  # half the server's default limit (TANDEM_MAX_BATCH_ROWS)
RETRY_STATUSES = frozenset({429, 503})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

TwinRef = int | str | Twin  # an id, a name, or a twin read before


class ApiError(Exception):
    """An error answer of the service: its status, `error` code, `detail` and `errors` list.

    `partial` is set when an upload split into batches failed after earlier batches were
    stored: what those batches did (a resend of the whole upload is safe: stored rows come
    back as duplicates)."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        partial: IngestResult | None = None,
    ):
        super().__init__(f"HTTP {status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.errors = errors or []
        self.partial = partial

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            return cls(response.status_code, "http_error", text or response.reason_phrase)
        return cls(
            response.status_code,
            str(body.get("error", "http_error")),
            str(body.get("detail", response.reason_phrase)),
            body.get("errors") or [],
        )


class Client:
    """A Tandem service at `url`. `api_key` is sent as `Authorization: Bearer KEY`.

    `retries` is how many times one request is resent (0: never); waits grow from `backoff`
    seconds, doubling, with jitter, up to `max_backoff`; a `Retry-After` header sets the wait
    (up to `max_backoff`). `verify`: TLS certificate checking (False, or a CA bundle's path).
    `transport` and `sleep` are for tests. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        headers = {"user-agent": "tandem-client"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            verify=ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify,
            transport=transport,
        )
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.batch_rows = batch_rows
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- twins ------------------------------------------------------------------------------
    def create_twin(
        self,
        name: str,
        outputs: Sequence[str],
        model: Mapping[str, Any],
        inputs: Sequence[str] = (),
        learner: Mapping[str, Any] | None = None,
    ) -> Twin:
        """`POST /twins`; raises ApiError 409 if the name exists, 422 naming a bad field."""
        body: dict[str, Any] = {
            "name": name,
            "inputs": list(inputs),
            "outputs": list(outputs),
            "model": dict(model),
        }
        if learner is not None:
            body["learner"] = dict(learner)
        return Twin.from_dict(self._call("POST", "/twins", json=body, resend=False).json())

    def twins(self) -> list[Twin]:
        """`GET /twins`: every twin with its status."""
        data = self._call("GET", "/twins").json()
        rows = data["twins"] if isinstance(data, dict) else data
        return [Twin.from_dict(t) for t in rows]

    def twin(self, twin: TwinRef) -> Twin:
        """`GET /twins/{id}`; a name is looked up first (ApiError 404 if no twin has it)."""
        return Twin.from_dict(self._call("GET", self._path(twin)).json())

    def find_twin(self, name: str) -> Twin | None:
        """The twin called `name`, or None."""
        return next((t for t in self.twins() if t.name == name), None)

    def delete_twin(self, twin: TwinRef) -> None:
        """`DELETE /twins/{id}`: the twin with its observations, versions and drift events."""
        self._call("DELETE", self._path(twin), resend=False)

    # -- observations -----------------------------------------------------------------------
    def post_observations(
        self,
        twin: TwinRef,
        observations: Iterable[Mapping[str, Any]],
        batch_rows: int | None = None,
    ) -> IngestResult:
        """`POST /twins/{id}/observations` of `{ts, inputs, outputs}` rows (`ts`: epoch
        seconds, RFC 3339 or a datetime). More than `batch_rows` rows go in several requests;
        a batch the server finds too large (413) is split in halves and sent again."""
        path = self._path(twin) + "/observations"
        size = batch_rows or self.batch_rows
        total: IngestResult | None = None
        batch: list[dict[str, Any]] = []
        for row in observations:
            batch.append(_json_row(row))
            if len(batch) >= size:
                total, size = self._post_rows(path, batch, total, size)
                batch = []
        if batch or total is None:
            total, _ = self._post_rows(path, batch, total, size)
        return total

    def _post_rows(
        self, path: str, rows: list[dict[str, Any]], total: IngestResult | None, size: int
    ) -> tuple[IngestResult, int]:
        """Post `rows` in order in batches of `size`, halving `size` at each 413 (nothing of
        a refused batch is stored); returns the running total and the size that went through."""
        pending = [rows]
        while pending:
            batch = pending.pop(0)
            try:
                response = self._call("POST", path, json={"observations": batch})
            except ApiError as e:
                if e.status_code == 413 and len(batch) > 1:
                    size = min(size, len(batch) // 2)
                    rest = [r for chunk in [batch, *pending] for r in chunk]
                    pending = [rest[k : k + size] for k in range(0, len(rest), size)]
                    continue
                e.partial = total
                raise
            result = IngestResult.from_dict(response.json())
            total = result if total is None else total + result
        assert total is not None
        return total, size

    def post_csv(self, twin: TwinRef, text: str | bytes) -> IngestResult:
        """`POST /twins/{id}/observations` as `text/csv`: a header `ts,<channel>,...` and one
        row per observation, in one request (see `tandem_client.tabular` for large files)."""
        body = text.encode() if isinstance(text, str) else text
        response = self._call(
            "POST",
            self._path(twin) + "/observations",
            content=body,
            headers={"content-type": "text/csv"},
        )
        return IngestResult.from_dict(response.json())

    def history(
        self,
        twin: TwinRef,
        *,
        start: float | str | datetime | None = None,
        end: float | str | datetime | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> History:
        """One page of `GET /twins/{id}/observations`; pass `next_after_seq` as `after_seq`
        for the next one, or use `iter_history`."""
        params = {
            "start": _ts(start),
            "end": _ts(end),
            "after_seq": after_seq,
            "limit": limit,
        }
        params = {k: v for k, v in params.items() if v is not None}
        return History.from_dict(
            self._call("GET", self._path(twin) + "/observations", params=params).json()
        )

    def iter_history(
        self,
        twin: TwinRef,
        *,
        start: float | str | datetime | None = None,
        end: float | str | datetime | None = None,
        after_seq: int | None = None,
        page_rows: int | None = None,
    ) -> Iterator[HistoryRow]:
        """Every observation from `start` to `end` (or after `after_seq`), page after page."""
        twin_id = self._id(twin)
        while True:
            page = self.history(twin_id, start=start, end=end, after_seq=after_seq, limit=page_rows)
            yield from page.observations
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    def history_all(self, twin: TwinRef, **kwargs: Any) -> History:
        """All pages of `iter_history` as one `History` (for `to_pandas()`/`to_numpy()`)."""
        return History(observations=list(self.iter_history(twin, **kwargs)))

    # -- what the twin knows ----------------------------------------------------------------
    def predict(
        self, twin: TwinRef, inputs: Sequence[Mapping[str, float]], dt: float | Sequence[float]
    ) -> Prediction:
        """`POST /twins/{id}/predict`: roll forward under future `inputs`, `dt` s apart
        (409 until the twin has learned)."""
        body = {
            "inputs": [dict(u) for u in inputs],
            "dt": dt if isinstance(dt, float | int) else list(dt),
        }
        return Prediction.from_dict(
            self._call("POST", self._path(twin) + "/predict", json=body).json()
        )

    def parameters(self, twin: TwinRef) -> Parameters:
        return Parameters.from_dict(self._call("GET", self._path(twin) + "/parameters").json())

    def versions(self, twin: TwinRef, limit: int = 100) -> list[Version]:
        """Version history, newest first."""
        response = self._call("GET", self._path(twin) + "/versions", params={"limit": limit})
        return [Version.from_dict(v) for v in response.json()]

    def drift(self, twin: TwinRef, limit: int = 100) -> Drift:
        response = self._call("GET", self._path(twin) + "/drift", params={"limit": limit})
        return Drift.from_dict(response.json())

    # -- operations -------------------------------------------------------------------------
    def metrics(self) -> str:
        """`GET /metrics`: Prometheus text."""
        return self._call("GET", "/metrics").text

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: the process is up."""
        return self._call("GET", "/healthz").json()

    def ready(self) -> Readiness:
        """`GET /readyz`: ready, or not and why (a 503 here is an answer, not retried)."""
        response = self._call("GET", "/readyz", ok=(200, 503), retry_statuses=frozenset())
        return Readiness.from_dict(response.json())

    # -- plumbing ---------------------------------------------------------------------------
    def _id(self, twin: TwinRef) -> int:
        if isinstance(twin, Twin):
            return twin.id
        if isinstance(twin, int):
            return twin
        found = self.find_twin(twin)
        if found is None:
            raise ApiError(404, "not_found", f"no twin is named {twin!r}")
        return found.id

    def _path(self, twin: TwinRef) -> str:
        return f"/twins/{self._id(twin)}"

    def _call(
        self,
        method: str,
        path: str,
        *,
        resend: bool = True,
        ok: tuple[int, ...] = (),
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying as the module docstring says; raise ApiError for an error answer.
        `resend=False`: only retry what certainly did not reach the server."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                if attempt >= self.retries or not (resend or isinstance(e, NOT_SENT)):
                    raise
                self._sleep(self._wait(attempt, None))
            else:
                if response.status_code < 400 or response.status_code in ok:
                    return response
                if response.status_code not in retry_statuses or attempt >= self.retries:
                    raise ApiError.from_response(response)
                self._sleep(self._wait(attempt, response.headers.get("retry-after")))
            attempt += 1

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        told = _retry_after_seconds(retry_after)
        if told is not None:
            return min(told, self.max_backoff)
        wait = min(self.backoff * 2**attempt, self.max_backoff)
        return wait * random.uniform(0.5, 1.0)


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _ts(value: float | str | datetime | None) -> float | str | None:
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo else value.isoformat() + "Z"
    return value


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("ts"), datetime):
        out["ts"] = _ts(out["ts"])
    return out
