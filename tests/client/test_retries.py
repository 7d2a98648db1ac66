"""The client's retries, backoff and batch splitting, against an httpx MockTransport."""

from __future__ import annotations

import email.utils
import json
import time

import httpx
import pytest

from tandem_client import ApiError, Client

ACCEPTED = {"accepted": 1, "duplicates": 0, "first_seq": 1, "last_seq": 1}
ROW = {"ts": 1.0, "inputs": {}, "outputs": {"y": 1.0}}


def client_with(answers, **options):
    """A client whose server answers from `answers` in turn (a Response, or an exception to
    raise); returns it, the requests it sent and the waits it slept."""
    sent, waits = [], []
    answers = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    options.setdefault("retries", 3)
    client = Client(
        "http://tandem", transport=httpx.MockTransport(handle), sleep=waits.append, **options
    )
    return client, sent, waits


def busy(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after else {}
    body = {"error": "busy", "detail": "try later", "errors": []}
    return httpx.Response(status, json=body, headers=headers)


def test_429_and_503_are_retried_after_the_time_retry_after_gives():
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    client, sent, waits = client_with(
        [busy(429, "2"), busy(503, later), httpx.Response(202, json=ACCEPTED)]
    )
    assert client.post_observations(1, [ROW]).accepted == 1
    assert len(sent) == 3
    assert waits[0] == 2.0
    assert 3.0 < waits[1] <= 5.0  # an HTTP date: the time until then


def test_without_retry_after_the_wait_doubles_with_jitter_up_to_the_cap():
    client, _, waits = client_with([busy(503)] * 4, backoff=1.0, max_backoff=3.0)
    with pytest.raises(ApiError) as error:
        client.health()
    assert error.value.status_code == 503 and error.value.detail == "try later"
    assert len(waits) == 3
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 1.5 <= waits[2] <= 3.0


def test_a_retry_after_longer_than_the_cap_waits_the_cap():
    client, _, waits = client_with(
        [busy(429, "3600"), httpx.Response(200, json={})], max_backoff=10.0
    )
    client.health()
    assert waits == [10.0]


def test_connection_errors_are_retried_then_raised():
    refused = httpx.ConnectError("connection refused")
    client, sent, _ = client_with([refused, refused, httpx.Response(200, json={"status": "ok"})])
    assert client.health() == {"status": "ok"}
    client, sent, _ = client_with([refused] * 4)
    with pytest.raises(httpx.ConnectError):
        client.health()
    assert len(sent) == 4  # the first try and 3 retries


def test_observations_are_resent_after_a_lost_answer_but_a_new_twin_is_not():
    lost = httpx.ReadTimeout("no answer")
    client, sent, _ = client_with([lost, httpx.Response(202, json=ACCEPTED)])
    assert client.post_observations(1, [ROW]).accepted == 1
    assert len(sent) == 2
    client, sent, _ = client_with([lost])
    with pytest.raises(httpx.ReadTimeout):
        client.create_twin("hx", outputs=["y"], model={"kind": "arx"})
    assert len(sent) == 1  # it may have been created: a resend would answer 409


def test_an_error_that_retrying_cannot_fix_is_raised_at_once():
    body = {
        "error": "invalid",
        "detail": "1 of 1 observations are invalid",
        "errors": [{"index": 0, "field": "ts", "message": "is required"}],
    }
    client, sent, _ = client_with([httpx.Response(422, json=body)])
    with pytest.raises(ApiError) as error:
        client.post_observations(1, [{"outputs": {"y": 1.0}}])
    assert len(sent) == 1
    assert error.value.errors == body["errors"]
    assert str(error.value) == "HTTP 422 invalid: 1 of 1 observations are invalid"


def test_a_batch_the_server_finds_too_large_is_split_in_halves():
    def handle(request: httpx.Request) -> httpx.Response:
        rows = json.loads(request.content)["observations"]
        if len(rows) > 3:
            return httpx.Response(413, json={"error": "too_large", "detail": "", "errors": []})
        seq = int(rows[0]["ts"])
        result = {
            "accepted": len(rows),
            "duplicates": 0,
            "first_seq": seq,
            "last_seq": seq + len(rows) - 1,
        }
        return httpx.Response(202, json=result)

    client = Client("http://tandem", transport=httpx.MockTransport(handle))
    rows = [{"ts": float(i), "inputs": {}, "outputs": {"y": 0.0}} for i in range(1, 11)]
    result = client.post_observations(1, rows, batch_rows=8)
    assert (result.accepted, result.first_seq, result.last_seq) == (10, 1, 10)
    assert result.batches == 5  # 8 refused, then 4 refused: 2 rows a batch from then on


def test_the_api_key_is_sent_as_a_bearer_token():
    client, sent, _ = client_with([httpx.Response(200, json={"status": "ok"})], api_key="k-123")
    client.health()
    assert sent[0].headers["authorization"] == "Bearer k-123"


def test_a_service_that_is_not_ready_is_an_answer_not_a_retry():
    body = {"status": "unavailable", "error": "not_ready", "detail": "schema at 0001", "errors": []}
    client, sent, _ = client_with([httpx.Response(503, json=body)])
    ready = client.ready()
    assert not ready.ready and ready.detail == "schema at 0001"
    assert len(sent) == 1
