"""Webhooks: a job's events POSTed to the URL its owner gave at submission, signed
as Standard Webhooks has it, retried with backoff, and never sent to an internal
address.

Events (``jobs.record.WebhookEvent``): ``start`` (a worker took the job),
``progress`` (images got done; at most one per ``progress_interval_s``) and
``completed`` (the job ended: finished, failed or canceled). A delivery's body is
``{"type": EVENT, "timestamp": ..., "data": JOB}``, JOB the job as GET
/v1/jobs/{id} returns it (``jobs.resource``), as it was at the event.

Where the events come from: the store announces a job's start, its finish, a failure
or a cancel (``JobStore.announce``); each becomes a delivery in Redis, its body fixed
then (``jobs.outbox``). The
API process runs the ``WebhookSender``, a thread that claims due deliveries, signs
each attempt afresh, and POSTs it to an address it has just resolved and checked
(a host that now resolves to an internal address is refused: DNS rebinding); it
also polls the progress of running jobs that asked for it. No worker and no request
ever waits on a receiver; a delivery whose last attempt fails is logged and
counted, and its job is unaffected.

Targets (``Targets``): https to public addresses; http, and internal addresses
(loopback, private, link-local such as the cloud metadata address, ...), only for
the hosts and networks the allow-list names.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase

import httpx

from jobs.keys import (
    WEBHOOK_DUE_KEY,
    WEBHOOK_OUTCOMES_KEY,
    WEBHOOK_PROGRESS_KEY,
    webhook_delivery_key,
    webhook_throttle_key,
)
from jobs.outbox import queue_delivery
from jobs.record import JobStatus, WebhookEvent
from jobs.store import JobStore

log = logging.getLogger("pureebm.webhooks")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2000
WEBHOOKS_OFF = "this service sends no webhooks (PUREEBM_WEBHOOK_SECRET is unset)"
SECRET_PREFIX = "whsec_"  # Standard Webhooks: the secret is this and its key in base64
DELIVERY_TIMEOUT_S = 10.0  # each phase of an attempt: connecting, sending, each read
ATTEMPT_DEADLINE_S = 15.0  # a whole attempt, however slowly the receiver answers
MAX_BACKOFF_S = 3600.0  # the wait before a retry doubles from 1 s up to this
CLAIM_S = 60.0  # a claimed delivery is due again after this unless its attempt ends first
PARALLEL_DELIVERIES = 8
TICK_S = 0.25  # how often the sender looks for due deliveries
PAUSE_AFTER_ERROR_S = 5.0  # and after an error (Redis away, say)
USER_AGENT = "PureEBM-webhooks"
HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: reaches internal IPv4
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, but it still embeds IPv4

# Claims the due deliveries (at most ARGV[3]): each is due again at ARGV[2], when a
# sender that died during the attempt has not rescheduled or removed it.
CLAIM_DUE = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('zadd', KEYS[1], ARGV[2], id) end
return ids
"""


class WebhookError(ValueError):
    """A webhook the service refuses; ``field`` is the form field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- the subscription -----------------------------------------------------------


def parse_events(text: str | None) -> list[WebhookEvent]:
    """``webhook_events`` as sent: a comma-separated subset of the events; every
    event when unset."""
    if text is None:
        return list(WebhookEvent)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    known = ", ".join(WebhookEvent)
    if not names:
        raise WebhookError("webhook_events", f"name at least one event ({known})")
    for name in names:
        if name not in {event.value for event in WebhookEvent}:
            raise WebhookError("webhook_events", f"unknown event {name!r} (events: {known})")
    return [WebhookEvent(name) for name in names]


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, NAT64), if any."""
    if address in NAT64 or address in LOCAL_NAT64 or address in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def is_public(address: Address) -> bool:
    """Whether the address is on the public internet: not loopback, private,
    link-local (the cloud metadata address), shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:  # fec0::/10, which Python may still call global
            return False
        if inner := embedded_ipv4(address):
            address = inner
    refused = address.is_multicast or address.is_reserved or address.is_unspecified
    return address.is_global and not refused


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookError("webhook", f"cannot resolve {host}: {e}") from e
    found = (ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    return list(dict.fromkeys(found))


def hostname(url: httpx.URL) -> str:
    """The URL's host as resolved, checked and sent (an internationalised name in
    its IDNA form, the one the Host header carries)."""
    return url.raw_host.decode("ascii")


@dataclass(frozen=True)
class Targets:
    """Where webhooks may go: any host over https at public addresses; beyond that,
    the hosts (``hooks.example.com``, ``*.example.com``) and networks (``10.1.2.3``,
    ``10.0.0.0/8``) that the allow-list names, over http too and at any address."""

    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Targets:
        hosts, networks = [], []
        for entry in (e.strip().lower() for e in entries):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]")))
            except ValueError as e:
                if "/" in entry or ":" in entry or not HOST_PATTERN.fullmatch(entry):
                    raise ValueError(
                        f"webhook allow-list entry {entry!r} is not a host name, a *.domain "
                        "pattern, an IP address or a network"
                    ) from e
                hosts.append(entry.rstrip("."))
        return cls(tuple(hosts), tuple(networks))

    def is_listed(self, host: str) -> bool:
        """Whether the allow-list names the host: by name or pattern or, for an
        address, by a network that holds it."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower().rstrip(".")
            return any(fnmatchcase(name, pattern) for pattern in self.hosts)
        return any(address in network for network in self.networks)

    def allows(self, host: str, address: Address) -> bool:
        """Whether the host may be reached at this address."""
        named = self.is_listed(host) or any(address in network for network in self.networks)
        return named or is_public(address)

    def check(self, url: str) -> tuple[httpx.URL, list[Address]]:
        """The URL and the addresses it may be sent to, resolved now; raises
        WebhookError saying why it may not."""
        if len(url) > MAX_URL_CHARS:
            raise WebhookError("webhook", f"the URL is over {MAX_URL_CHARS} characters")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise WebhookError("webhook", f"not a URL: {e}") from e
        if parsed.scheme not in ("https", "http") or not parsed.host:
            raise WebhookError("webhook", "must be an https:// URL with a host")
        if parsed.userinfo:
            raise WebhookError(
                "webhook", "credentials in the URL are not sent: verify the signature instead"
            )
        host = hostname(parsed)
        if parsed.scheme == "http" and not self.is_listed(host):
            raise WebhookError(
                "webhook",
                f"http is allowed only to hosts the allow-list names (not {host}): use https",
            )
        addresses = resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        for address in addresses:
            if not self.allows(host, address):  # the address itself is not told
                log.warning("webhook target refused", extra={"host": host, "address": str(address)})
                raise WebhookError(
                    "webhook",
                    f"{host} is or resolves to an internal address, which the allow-list "
                    "(PUREEBM_WEBHOOK_ALLOWED_HOSTS) does not name",
                )
        return parsed, addresses


# -- signatures -------------------------------------------------------------------


def owner_secret(master: bytes, owner: str) -> str:
    """The secret that signs ``owner``'s webhooks, as Standard Webhooks writes one
    (``whsec_`` and its key in base64): the key is HMAC-SHA256 of the owner under the
    service's master secret, so it is never stored, and changes with the master."""
    key = hmac.new(master, f"pureebm webhooks {owner}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: v1, and the base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` under the secret's key."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# -- delivery ---------------------------------------------------------------------


def post_pinned(
    url: httpx.URL, address: str, target: str, headers: dict[str, str], body: bytes
) -> int:
    """POST ``body`` to ``url``'s host at ``address``, on a connection of its own (no
    proxy, no redirect followed; TLS checks the certificate against the URL's host);
    the answer's status. The socket is shut down at ATTEMPT_DEADLINE_S, however slowly
    the receiver answers, so no receiver holds a delivery slot for long."""
    port = url.port or (443 if url.scheme == "https" else 80)
    sock = socket.create_connection((address, port), timeout=DELIVERY_TIMEOUT_S)
    if url.scheme == "https":  # the handshake waits until the deadline is running
        sock = tls_context().wrap_socket(
            sock, server_hostname=hostname(url), do_handshake_on_connect=False
        )
    connection = http.client.HTTPConnection(hostname(url), port, timeout=DELIVERY_TIMEOUT_S)
    connection.sock = sock
    deadline = threading.Timer(ATTEMPT_DEADLINE_S, shut, (sock,))
    deadline.start()
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()
        connection.request("POST", target, body, {**headers, "user-agent": USER_AGENT})
        return connection.getresponse().status
    finally:
        deadline.cancel()
        connection.close()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's CA store and checks, loaded once."""
    return ssl.create_default_context()


def shut(sock: socket.socket) -> None:
    """Wake a thread blocked on ``sock`` (closing it alone would not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class WebhookSender:
    """The API's delivery thread (see the module docstring): ``start``, ``stop``."""

    def __init__(
        self,
        store: JobStore,
        master_secret: bytes,
        targets: Targets,
        attempts: int,
        progress_interval_s: float,
    ) -> None:
        self.store, self.redis = store, store.redis
        self.master_secret, self.targets = master_secret, targets
        self.attempts, self.progress_interval_s = attempts, progress_interval_s
        self.claim_due = self.redis.register_script(CLAIM_DUE)
        self.pool = ThreadPoolExecutor(PARALLEL_DELIVERIES, thread_name_prefix="webhook")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="webhook-sender", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=ATTEMPT_DEADLINE_S + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        pause = TICK_S
        while not self.stopping.wait(pause):
            try:
                self.send_progress()
                while self.send_due() == PARALLEL_DELIVERIES and not self.stopping.is_set():
                    pass  # a backlog: the next batch at once
                pause = TICK_S
            except Exception:
                log.exception("webhook sender failed; trying again shortly")
                pause = PAUSE_AFTER_ERROR_S

    def send_due(self) -> int:
        """Attempt every due delivery (in parallel, up to PARALLEL_DELIVERIES at a
        time); returns how many there were."""
        now = time.time()
        claimed = self.claim_due(
            keys=[WEBHOOK_DUE_KEY], args=[now, now + CLAIM_S, PARALLEL_DELIVERIES]
        )
        list(self.pool.map(self.attempt, [c.decode() for c in claimed]))
        return len(claimed)

    def attempt(self, delivery_id: str) -> None:
        """One attempt at a delivery; then it is done, due again after a backoff, or
        given up on (logged and counted) after its last attempt."""
        key = webhook_delivery_key(delivery_id)
        delivery = {k.decode(): v for k, v in self.redis.hgetall(key).items()}
        if "url" not in delivery:  # expired unsent (or only its count left behind)
            self.redis.delete(key)
            self.redis.zrem(WEBHOOK_DUE_KEY, delivery_id)
            return
        attempts = int(delivery["attempts"]) + 1
        try:
            status = self.post(
                delivery_id, delivery["url"].decode(), delivery["owner"].decode(), delivery["body"]
            )
            error = None if 200 <= status < 300 else f"the receiver answered {status}"
        except Exception as e:  # a refused target, the network, a receiver cut off
            error = str(e) or type(e).__name__
        with self.redis.pipeline() as pipe:
            if error is None or attempts >= self.attempts:
                pipe.zrem(WEBHOOK_DUE_KEY, delivery_id)
                pipe.delete(key)
                pipe.hincrby(WEBHOOK_OUTCOMES_KEY, "failed" if error else "delivered", 1)
            else:
                backoff = min(2.0 ** (attempts - 1), MAX_BACKOFF_S)
                pipe.hset(key, "attempts", attempts)
                pipe.zadd(WEBHOOK_DUE_KEY, {delivery_id: time.time() + backoff})
            pipe.execute()
        if error is not None and attempts >= self.attempts:
            log.error(
                f"webhook not delivered; its last attempt: {error}",
                extra={
                    "job_id": delivery["job"].decode(),
                    "event": delivery["event"].decode(),
                    "attempts": attempts,
                },
            )

    def post(self, delivery_id: str, url: str, owner: str, body: bytes) -> int:
        """POST the signed body to the URL's host at an address checked just now;
        the answer's status."""
        parsed, addresses = self.targets.check(url)
        timestamp = int(time.time())
        secret = owner_secret(self.master_secret, owner)
        headers = {
            "host": parsed.netloc.decode("ascii"),
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, delivery_id, timestamp, body),
        }
        address = min(addresses, key=lambda a: a.version)  # IPv4 first: reachable more often
        target = parsed.raw_path.decode("ascii")
        return post_pinned(parsed, str(address), target, headers, body)

    def send_progress(self) -> None:
        """A progress event for each running job that asked for them, when its count
        has moved, at most one per ``progress_interval_s`` per job (across APIs)."""
        throttle_ms = int(self.progress_interval_s * 1000)
        for watched, last in self.redis.hgetall(WEBHOOK_PROGRESS_KEY).items():
            try:
                self.watch(watched.decode(), int(last), throttle_ms)
            except Exception:  # one job's trouble holds up no other delivery
                log.exception("progress not checked", extra={"job_id": watched.decode()})

    def watch(self, job_id: str, last: int, throttle_ms: int) -> None:
        """A progress event for the watched job if its count has risen past ``last``."""
        if not self.redis.set(webhook_throttle_key(job_id), 1, nx=True, px=throttle_ms):
            return
        record = self.store.get(job_id)
        if record is None or record.status != JobStatus.running or record.webhook is None:
            self.redis.hdel(WEBHOOK_PROGRESS_KEY, job_id)
            return
        done = self.store.progress(record).done
        if done > last:
            url, progress = record.webhook.url, self.store.progress(record)
            queue_delivery(self.redis, record, WebhookEvent.progress, url, progress)
            self.redis.hset(WEBHOOK_PROGRESS_KEY, job_id, done)
