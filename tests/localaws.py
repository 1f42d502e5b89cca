"""Local AWS stand-ins for the tests: a moto server subprocess and a fault-injecting proxy.

``MotoServer`` runs ``python -m moto.server`` on 127.0.0.1 (a separate process, so moto's
global state and its werkzeug threads never mix with the code under test) and offers helpers
to create and read back Kinesis streams, Firehose delivery streams and S3 buckets.

``FaultProxy`` is a small HTTP/1.1 reverse proxy that sits between a boto3 client and the moto
server.  moto never throttles, never fails part of a batch and never goes away, so the proxy
does that on demand: throttle N calls, fail chosen entries of a PutRecords/PutRecordBatch
batch, answer 5xx, drop the connection, delay, or play a dead endpoint.

Wire protocol (checked against the installed botocore 1.44 ``service-2.json`` files and by
capturing what it sends):

* Kinesis (``Kinesis_20131202``) and Firehose (``Firehose_20150804``) are ``"protocol":
  "json"``, ``jsonVersion 1.1`` and list only ``json`` in ``protocols`` -- no CBOR (CBOR is
  what the Java SDK used for Kinesis; botocore never has).  Every call is ``POST /`` with
  ``X-Amz-Target: <prefix>.<Operation>``, ``Content-Type: application/x-amz-json-1.1``, a
  ``Content-Length`` (never chunked) and base64 ``Data`` inside ``Records``.  Errors are
  ``{"__type": code, "message": ...}``; botocore takes the code from ``__type`` (or the
  ``x-amzn-ErrorType`` header).
* STS is the ``query`` protocol: form-encoded ``Action=AssumeRole&Version=2011-06-15&...``,
  XML answers, errors as ``<ErrorResponse><Error><Type/><Code/><Message/></Error>...``.
* S3 (only used directly by ``MotoServer`` helpers) is REST-XML; the proxy passes it through
  and identifies no operation for it.

moto does not check SigV4 signatures, which is what lets the proxy rewrite a request body
(``fail_entries``) before forwarding it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

import boto3
from botocore.config import Config

__all__ = [
    "ACCOUNT_ID",
    "REGION",
    "CallRecord",
    "FaultProxy",
    "MotoServer",
    "free_port",
    "make_client",
]

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
#: moto's default account; used in ARNs and in synthesized error messages.
ACCOUNT_ID = "123456789012"

_BATCH_OPERATIONS = frozenset({"PutRecords", "PutRecordBatch"})


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago (the caller must cope with losing a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def make_client(service: str, endpoint_url: str, config: Config | None = None) -> Any:
    """A boto3 client with dummy credentials in us-east-1 aimed at ``endpoint_url``.

    A private ``Session`` keeps AWS_PROFILE and friends in the environment from leaking in;
    explicit keys win over anything botocore could find on its own.
    """
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    # Any: boto3-stubs types client() per service-name literal; callers pass plain strings.
    untyped: Any = session
    return untyped.client(service, endpoint_url=endpoint_url, config=config)


def _wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll ``predicate`` until it is truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# moto server
# --------------------------------------------------------------------------------------------


class MotoServer:
    """``moto.server`` in a subprocess on 127.0.0.1, with Kinesis/Firehose/S3 helpers.

    Use as a context manager or call ``start()``/``stop()``.  The server's request log goes to
    ``log_path`` (a temp file unless given) rather than a pipe: moto logs every request, and an
    unread pipe would fill up and stall the server.

    moto's PutRecords gets slower as records pile up (it copies the shard's key list on every
    put), so ``reset()`` between tests.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 30.0,
        log_path: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self.start_timeout = start_timeout
        self.log_path = log_path
        # A log file we made ourselves is removed on stop(); one the caller named is kept.
        self._owns_log = log_path is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._clients: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._proc is None:
            raise RuntimeError("MotoServer is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> MotoServer:
        if self._proc is not None:
            return self
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
            os.close(fd)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A port picked by free_port() can be taken before moto binds it; try a few.
        attempts = 1 if self._requested_port else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._spawn_and_wait()
                return self
            except Exception as exc:
                last_error = exc
                self._terminate()
        self._close_log()
        raise RuntimeError(f"moto server did not start (log: {self.log_path})") from last_error

    def _spawn_and_wait(self) -> None:
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        env = dict(os.environ)
        # moto itself never needs real credentials; make sure it can't pick any up.
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
        )
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            if self._answers():
                return
            time.sleep(0.05)
        raise TimeoutError(f"moto server did not answer within {self.start_timeout}s")

    def _answers(self) -> bool:
        """True once the server answers HTTP at all (any status will do)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def reset(self) -> None:
        """Forget every stream, bucket and credential (``POST /moto-api/reset``)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30.0)
        try:
            conn.request("POST", "/moto-api/reset")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"moto reset answered {resp.status}")
        finally:
            conn.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._terminate(timeout)
        self._close_log()
        if self._owns_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            self.log_path = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # Signal this very process by pid -- never anything found by name.
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A cached boto3 client talking straight to moto (no proxy, botocore's retries)."""
        if service not in self._clients:
            self._clients[service] = make_client(service, self.url)
        return self._clients[service]

    def create_stream(self, name: str, shards: int = 1, timeout: float = 10.0) -> str:
        """Create a Kinesis stream, wait until it is ACTIVE, return its ARN."""
        kinesis = self.client("kinesis")
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        # moto makes streams ACTIVE at once; poll anyway so the helper means the same on AWS.
        _wait_until(
            lambda: (
                kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
                == "ACTIVE"
            ),
            timeout,
            what=f"stream {name} ACTIVE",
        )
        arn: str = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
        return arn

    def read_stream(self, name: str) -> list[tuple[bytes, str]]:
        """Every record of every shard, from TRIM_HORIZON, as ``(data, partition_key)``.

        Shards come in ListShards order, records in sequence order within a shard (there is
        no global order across shards).  Reading stops at the first empty GetRecords, which is
        exact on moto (unlike AWS, moto never returns an empty page before the tip).
        """
        kinesis = self.client("kinesis")
        shard_ids: list[str] = []
        kwargs: dict[str, Any] = {"StreamName": name}
        while True:
            page = kinesis.list_shards(**kwargs)
            shard_ids.extend(s["ShardId"] for s in page["Shards"])
            if not page.get("NextToken"):
                break
            kwargs = {"NextToken": page["NextToken"]}
        out: list[tuple[bytes, str]] = []
        for shard_id in shard_ids:
            iterator = kinesis.get_shard_iterator(
                StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
                if not page["Records"]:
                    break
                out.extend((r["Data"], r["PartitionKey"]) for r in page["Records"])
                iterator = page.get("NextShardIterator")
        return out

    def create_delivery_stream(self, name: str, bucket: str, timeout: float = 10.0) -> str:
        """Create ``bucket`` and a DirectPut delivery stream into it; return the stream's ARN.

        moto writes each PutRecordBatch/PutRecord straight into one S3 object (bytes
        concatenated, no separator added), ignoring the buffering hints.
        """
        self.client("s3").create_bucket(Bucket=bucket)
        firehose = self.client("firehose")
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                # moto does not check that the role exists or may write to the bucket.
                "RoleARN": f"arn:aws:iam::{ACCOUNT_ID}:role/firehose-delivery",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
            },
        )
        _wait_until(
            lambda: (
                firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"][
                    "DeliveryStreamStatus"
                ]
                == "ACTIVE"
            ),
            timeout,
            what=f"delivery stream {name} ACTIVE",
        )
        arn: str = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"][
            "DeliveryStreamARN"
        ]
        return arn

    def read_bucket(self, bucket: str) -> list[bytes]:
        """The body of every object in ``bucket``, in key order.

        moto's Firehose keys are ``YYYY/MM/DD/HH/<stream>-<version>-<timestamp>-<uuid>``;
        calls within the same second can therefore come back in any order -- compare as a
        multiset (or join and split on your own separators) unless one call was made.
        """
        s3 = self.client("s3")
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in sorted(keys)]


# --------------------------------------------------------------------------------------------
# fault proxy
# --------------------------------------------------------------------------------------------

FaultKind = Literal["throttle", "fail_entries", "error", "drop", "delay", "down", "echo", "large"]

#: AWS's rules for a stream whose MaxRecordSizeInKiB was raised (Kinesis API reference,
#: PutRecords and UpdateMaxRecordSize; "Handle large records" in the developer guide): each
#: record up to the stream's size counting its partition key, up to 10 MiB per request
#: counting the keys, 500 records, keys of 1-256 characters.
LARGE_RECORD_MAX_KIB = 10240
LARGE_REQUEST_BYTES = 10 * 1024 * 1024

DownMode = Literal["refuse", "reset"]


@dataclass(frozen=True)
class CallRecord:
    """One request as the proxy saw it and what it did with it."""

    #: Operation name ("PutRecords", "PutRecordBatch", "AssumeRole", ...); None when the
    #: proxy could not tell (REST calls such as S3, or a connection closed by ``set_down``).
    operation: str | None
    #: Signing service from the Authorization header ("kinesis", "firehose", "sts", ...).
    service: str | None
    #: Entries in the request as the client sent it: len(Records) for PutRecords and
    #: PutRecordBatch, 1 for PutRecord, 0 for anything else.
    entries: int
    #: HTTP status answered to the client; None when the connection was closed instead.
    status: int | None
    #: Which control acted on this call (None: forwarded untouched).
    fault: FaultKind | None = None
    #: For ``fail_entries``: the positions that were answered as failed.
    failed_indices: tuple[int, ...] = ()
    #: The request body exactly as the client sent it (before any rewriting).
    body: bytes = field(default=b"", repr=False)
    #: The request's headers as the client sent them (kept with the bodies).
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The body answered to the client (kept with the request bodies).
    answer: bytes = field(default=b"", repr=False)

    @property
    def faulted(self) -> bool:
        return self.fault is not None

    def records(self) -> list[dict[str, Any]]:
        """The request's Records with ``Data`` base64-decoded (batch/PutRecord calls only)."""
        if self.operation not in _BATCH_OPERATIONS and self.operation != "PutRecord":
            return []
        doc = json.loads(self.body)
        items = doc["Records"] if self.operation in _BATCH_OPERATIONS else [doc.get("Record", doc)]
        return [{**r, "Data": base64.b64decode(r["Data"])} for r in items]


@dataclass
class _Rule:
    kind: FaultKind
    remaining: int
    operations: frozenset[str] | None  # None: any operation
    code: str | None = None
    status: int | None = None
    message: str | None = None
    indices: frozenset[int] = frozenset()
    seconds: float = 0.0
    extra: Callable[[], str] | None = None

    def matches(self, operation: str | None) -> bool:
        return self.operations is None or operation in self.operations


@dataclass
class _Request:
    """What the handler learnt about one incoming request."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    operation: str | None
    service: str | None
    protocol: Literal["json", "query", "rest"]
    json_content_type: str
    entries: int


# Hop-by-hop headers (RFC 9110 7.6.1) plus the framing ones the proxy recomputes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",  # the proxy already answered 100-continue and holds the whole body
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def _targets(target: str | Iterable[str] | None) -> frozenset[str] | None:
    if target is None:
        return None
    if isinstance(target, str):
        return frozenset({target})
    return frozenset(target)


def _status_for_code(code: str) -> int:
    """The HTTP status AWS uses with ``code`` (400 for the client-side/throttling family)."""
    if code in {"ServiceUnavailableException", "ServiceUnavailable", "SlowDown"}:
        return 503
    if code in {
        "InternalFailure",
        "InternalFailureException",
        "InternalError",
        "InternalServerError",
    }:
        return 500
    return 400


def _stream_name(doc: dict[str, Any]) -> str:
    name = doc.get("StreamName") or doc.get("DeliveryStreamName")
    if name:
        return str(name)
    arn = str(doc.get("StreamARN", ""))
    return arn.rpartition("/")[2] or "unknown"


class FaultProxy:
    """A thread-safe, test-controlled HTTP/1.1 reverse proxy in front of ``upstream_url``.

    Controls queue up as rules.  Each incoming call takes the *first* queued rule (in the
    order the controls were called) that matches its operation and has calls left, so
    ``throttle(2); fail_entries({0})`` throttles two calls and then fails entry 0 of the next
    batch.  ``target`` is an operation name ("PutRecords", "PutRecordBatch", "AssumeRole",
    ...), several of them, or None for any call.  Calls with no matching rule are forwarded
    untouched.

    Default error codes follow AWS per service (see ``_defaults``): Kinesis throttling is
    ``ProvisionedThroughputExceededException``/400; Firehose has no throttling exception --
    its documented answer to "throughput limits exceeded" is ``ServiceUnavailableException``
    with HTTP 503 (botocore retries it as a transient 503, not as throttling); STS says
    ``Throttling``/400.  Pass ``code``/``status`` to override.
    """

    def __init__(
        self,
        upstream_url: str,
        host: str = "127.0.0.1",
        upstream_timeout: float = 60.0,
        keep_bodies: bool = True,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream_url!r}")
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port or 80
        self.upstream_timeout = upstream_timeout
        #: Keep each request body in ``CallRecord.body``; turn off for high-volume tests
        #: (a full PutRecords call is up to 5 MiB).
        self.keep_bodies = keep_bodies
        self.host = host
        self.port = 0
        self._cond = threading.Condition(threading.RLock())
        self._rules: list[_Rule] = []
        self._calls: list[CallRecord] = []
        self._down: DownMode | None = None
        self._server: _ProxyServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._connections_accepted = 0
        #: Streams played as large-record streams (see large_records): name -> record limit.
        self._large: dict[str, int] = {}
        self._large_kept: dict[str, list[tuple[bytes, str]]] = {}
        # Set by stop(): wakes up delayed calls so they are abandoned instead of reaching the
        # (shared, possibly already reset) upstream after the test that queued them is over.
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        with self._cond:
            if self._server is None and not self._stopping.is_set():
                self._listen(self.port)
        return self

    def _listen(self, port: int) -> None:
        server = _ProxyServer((self.host, port), self)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # short, so set_down()/stop() return quickly
            name=f"FaultProxy:{self.port}",
            daemon=True,
        )
        self._server, self._serve_thread = server, thread
        thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._serve_thread
        self._server = self._serve_thread = None
        if server is not None:
            server.shutdown()  # waits for serve_forever to return
            server.server_close()
        if thread is not None:
            thread.join()

    def _close_connections(self) -> None:
        """Shut every open client connection, including idle keep-alive ones.

        A FIN on an idle pooled connection makes urllib3 discard it before the next request
        (it checks for a dropped connection on checkout), so clients really see the change.
        """
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._cond:
            self._close_listener()
        self._close_connections()
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- controls -----------------------------------------------------------------------------

    def _add(self, rule: _Rule) -> None:
        if rule.remaining < 0:
            raise ValueError("count must be >= 0")
        if rule.remaining:
            with self._cond:
                self._rules.append(rule)

    def throttle(
        self,
        n: int,
        target: str | Iterable[str] | None = None,
        code: str | None = None,
        status: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching calls with a throttling error.

        ``code`` defaults per service: Kinesis ``ProvisionedThroughputExceededException``
        (400), Firehose ``ServiceUnavailableException`` (503), STS ``Throttling`` (400), S3
        ``SlowDown`` (503), other JSON services ``ThrottlingException`` (400).  ``status``
        defaults to what AWS sends with ``code``.
        """
        self._add(_Rule("throttle", n, _targets(target), code=code, status=status, message=message))

    def fail_entries(
        self,
        indices: Iterable[int],
        times: int = 1,
        code: str | None = None,
        message: str | None = None,
        target: str | Iterable[str] | None = None,
    ) -> None:
        """Fail entries at ``indices`` of the next ``times`` PutRecords/PutRecordBatch calls.

        Those entries are removed before forwarding, so moto stores only the others; the
        answer is moto's real one with failure entries spliced back in at those positions and
        FailedRecordCount/FailedPutCount raised accordingly -- the shape of an AWS partial
        failure (HTTP 200).  Indices past the end of a batch are ignored.  ``code`` defaults
        to ``ProvisionedThroughputExceededException`` for Kinesis and
        ``ServiceUnavailableException`` for Firehose (AWS also uses ``InternalFailure`` for
        both).  ``target`` may narrow it to "PutRecords" or "PutRecordBatch".
        """
        ops = _targets(target)
        ops = _BATCH_OPERATIONS if ops is None else ops & _BATCH_OPERATIONS
        if not ops:
            raise ValueError("fail_entries only applies to PutRecords/PutRecordBatch")
        self._add(_Rule("fail_entries", times, ops, code=code, message=message, indices=frozenset(indices)))

    def error(
        self,
        n: int,
        status: int = 500,
        target: str | Iterable[str] | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching calls with ``status`` and an AWS error body.

        ``code`` defaults to ``InternalFailure`` (``InternalError`` for S3) or, for 503,
        ``ServiceUnavailable``.
        """
        self._add(_Rule("error", n, _targets(target), code=code, status=status, message=message))

    def echo(
        self,
        n: int,
        status: int = 500,
        target: str | Iterable[str] | None = None,
        code: str = "InternalFailure",
        extra: Callable[[], str] | None = None,
    ) -> None:
        """Answer the next ``n`` matching calls with an error whose message echoes the text
        ``extra()`` gives at answer time, then every request header (session token included),
        as a misconfigured gateway or debugging endpoint would."""
        self._add(_Rule("echo", n, _targets(target), code=code, status=status, extra=extra))

    def drop(self, n: int, target: str | Iterable[str] | None = None) -> None:
        """Read the next ``n`` matching requests, then close the connection without answering.

        The request is consumed first so the close is a clean FIN (botocore:
        ``ConnectionClosedError``); nothing is forwarded.
        """
        self._add(_Rule("drop", n, _targets(target)))

    def delay(self, n: int, seconds: float, target: str | Iterable[str] | None = None) -> None:
        """Hold the next ``n`` matching calls for ``seconds``, then forward them.

        A delayed call is forwarded even if the client timed out meanwhile -- as on AWS, the
        write may land although the client saw a timeout.  ``stop()`` and ``set_down(True)``
        abandon calls still waiting.
        """
        self._add(_Rule("delay", n, _targets(target), seconds=seconds))

    def large_records(self, stream: str, max_record_kib: int = LARGE_RECORD_MAX_KIB) -> None:
        """Play `stream` as a Kinesis stream whose MaxRecordSizeInKiB was raised.

        moto refuses every record over 1 MiB, so PutRecords calls naming `stream` are answered
        here, by AWS's rules for large records (LARGE_*): a call breaking one is refused whole
        with a ValidationException (400), as AWS and moto refuse a record over the limit;
        otherwise every record is kept (``large_stream_records``) and the answer is
        PutRecords' own shape. Every other call still goes to moto.
        """
        if not 1024 <= max_record_kib <= LARGE_RECORD_MAX_KIB:
            raise ValueError("MaxRecordSizeInKiB is 1024 to 10240")
        with self._cond:
            self._large[stream] = max_record_kib * 1024
            self._large_kept.setdefault(stream, [])

    def large_stream_records(self, stream: str) -> list[tuple[bytes, str]]:
        """The records a large-record stream accepted, as ``(data, partition key)``, in order."""
        with self._cond:
            return list(self._large_kept.get(stream, []))

    def set_down(self, down: bool, mode: DownMode = "refuse") -> None:
        """Play a dead endpoint, or bring the proxy back on the same port.

        ``mode="refuse"`` closes the listening socket, so new connections are refused
        (botocore: ``EndpointConnectionError``).  ``mode="reset"`` keeps accepting but closes
        each connection at once without reading it (botocore: ``ConnectionClosedError``).
        Either way every open connection, idle keep-alive ones included, is shut.
        """
        with self._cond:
            if self._stopping.is_set():
                raise RuntimeError("FaultProxy is stopped")
            if down:
                self._down = mode
                if mode == "refuse":
                    self._close_listener()
            else:
                self._down = None
                if self._server is None:
                    # HTTPServer sets SO_REUSEADDR, so the old port can be bound again at once.
                    self._listen(self.port)
        if down:
            self._close_connections()

    @property
    def is_down(self) -> bool:
        with self._cond:
            return self._down is not None

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted so far (to check that keep-alive connections are reused)."""
        with self._cond:
            return self._connections_accepted

    def clear_faults(self) -> None:
        """Forget every control that has not been used up yet."""
        with self._cond:
            self._rules.clear()

    def pending_faults(self) -> int:
        """How many faulted calls the queued controls still have to deliver."""
        with self._cond:
            return sum(r.remaining for r in self._rules)

    # -- call log -----------------------------------------------------------------------------

    @property
    def calls(self) -> list[CallRecord]:
        """A snapshot of the calls seen so far, oldest first."""
        with self._cond:
            return list(self._calls)

    def clear(self) -> None:
        """Forget the recorded calls (queued controls stay)."""
        with self._cond:
            self._calls.clear()

    def wait_for_calls(self, n: int, operation: str | None = None, timeout: float = 10.0) -> list[CallRecord]:
        """Block until at least ``n`` calls (of ``operation``, if given) have been recorded.

        A call is recorded just before its answer is written (or its connection closed), so
        once the client has its answer the record is there; this is for calls whose client
        already gave up (delay) or runs in another thread.
        """

        def matching() -> list[CallRecord]:
            return [c for c in self._calls if operation is None or c.operation == operation]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                raise TimeoutError(f"saw {len(matching())} of {n} {operation or ''} calls")
            return matching()

    # -- used by the handler ------------------------------------------------------------------

    def _record(self, call: CallRecord) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _take_rule(self, operation: str | None) -> _Rule | None:
        with self._cond:
            for i, rule in enumerate(self._rules):
                if rule.matches(operation):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        del self._rules[i]
                    return rule
        return None

    def _register(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.add(conn)
            self._connections_accepted += 1
            self._handler_threads.add(threading.current_thread())

    def _unregister(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)
            self._handler_threads.discard(threading.current_thread())

    def _down_mode(self) -> DownMode | None:
        with self._cond:
            return self._down

    def _large_limit(self, req: _Request) -> tuple[str, int] | None:
        if req.operation != "PutRecords":
            return None
        try:
            stream = _stream_name(json.loads(req.body))
        except (ValueError, TypeError):
            return None
        with self._cond:
            limit = self._large.get(stream)
        return None if limit is None else (stream, limit)

    def _keep_large(self, stream: str, records: list[tuple[bytes, str]]) -> int:
        with self._cond:
            kept = self._large_kept[stream]
            first = len(kept)
            kept.extend(records)
            return first


class _ProxyServer(ThreadingHTTPServer):
    # Handler threads must not keep the test process alive; stop() joins them with a deadline.
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so botocore's pooled connections are kept alive across calls, as with AWS.
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus the
        # client's delayed ACK can stall every response by up to 40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.proxy._register(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.proxy._unregister(self.connection)

    def handle(self) -> None:
        proxy = self.server.proxy
        if proxy._down_mode() == "reset":
            # Don't even read: a dead backend behind a load balancer looks like this.
            proxy._record(CallRecord(None, None, 0, None, fault="down"))
            self.close_connection = True
            return
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read proxy.calls instead of a request log on stderr

    # Every method goes the same way; botocore uses POST for Kinesis/Firehose/STS.
    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    # -- request ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Skip trailers up to the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _parse_request(self) -> _Request:
        body = self._read_body()
        headers = [(k, v) for k, v in self.headers.items()]
        content_type = self.headers.get("Content-Type", "")
        service = None
        auth = self.headers.get("Authorization", "")
        if "Credential=" in auth:
            # Credential=AKID/20240101/us-east-1/kinesis/aws4_request
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            if len(scope) >= 5:
                service = scope[3]
        operation: str | None = None
        protocol: Literal["json", "query", "rest"] = "rest"
        target = self.headers.get("X-Amz-Target")
        if target:
            protocol = "json"
            operation = target.rpartition(".")[2]
        else:
            params: dict[str, list[str]] = {}
            if content_type.startswith("application/x-www-form-urlencoded"):
                params = parse_qs(body.decode("utf-8", "replace"))
            if "Action" not in params:
                params = parse_qs(urlsplit(self.path).query)
            if "Action" in params:
                protocol = "query"
                operation = params["Action"][0]
        entries = 0
        if operation in _BATCH_OPERATIONS:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entries = len(json.loads(body)["Records"])
        elif operation == "PutRecord":
            entries = 1
        return _Request(
            method=self.command,
            path=self.path,
            headers=headers,
            body=body,
            operation=operation,
            service=service,
            protocol=protocol,
            json_content_type=content_type or "application/x-amz-json-1.1",
            entries=entries,
        )

    # -- dispatch -----------------------------------------------------------------------------

    def _proxy(self) -> None:
        proxy = self.server.proxy
        req = self._parse_request()

        def record(status: int | None, fault: FaultKind | None, failed: tuple[int, ...] = (),
                   answer: bytes = b"") -> None:
            keep = proxy.keep_bodies
            proxy._record(
                CallRecord(
                    req.operation,
                    req.service,
                    req.entries,
                    status,
                    fault,
                    failed,
                    req.body if keep else b"",
                    tuple(req.headers) if keep else (),
                    answer if keep else b"",
                )
            )

        if proxy._down_mode() is not None:
            # A keep-alive connection that slipped through set_down(): treat as dead too.
            record(None, "down")
            self._close()
            return

        rule = proxy._take_rule(req.operation)
        large = proxy._large_limit(req) if rule is None else None
        if large is not None:
            status, headers, body = self._large_put(req, *large)
            record(status, "large", answer=body)
            self._respond(status, headers, body)
        elif rule is None:
            status, headers, body = self._forward(req, req.body)
            record(status, None, answer=body)
            self._respond(status, headers, body)
        elif rule.kind == "echo":
            said = (rule.extra() if rule.extra else "") + " request headers: " + "; ".join(
                f"{name}: {value}" for name, value in sorted(
                    req.headers, key=lambda h: h[0].lower() != "x-amz-security-token"))
            status, headers, body = _error_response(req, rule.code or "InternalFailure",
                                                    rule.status or 500, said)
            record(status, "echo", answer=body)
            self._respond(status, headers, body)
        elif rule.kind in ("throttle", "error"):
            code, status, message = _defaults(rule, req)
            status, headers, body = _error_response(req, code, status, message)
            record(status, rule.kind)
            self._respond(status, headers, body)
        elif rule.kind == "drop":
            record(None, "drop")
            self._close()
        elif rule.kind == "delay":
            if proxy._stopping.wait(rule.seconds) or proxy._down_mode() is not None:
                record(None, "delay")
                self._close()
                return
            status, headers, body = self._forward(req, req.body)
            record(status, "delay")
            self._respond(status, headers, body)
        else:  # fail_entries
            status, headers, body, failed = self._fail_entries(req, rule)
            record(status, "fail_entries", failed)
            self._respond(status, headers, body)

    def _fail_entries(
        self, req: _Request, rule: _Rule
    ) -> tuple[int, list[tuple[str, str]], bytes, tuple[int, ...]]:
        doc = json.loads(req.body)
        records = doc["Records"]
        failed = tuple(sorted(i for i in rule.indices if 0 <= i < len(records)))
        kept = [r for i, r in enumerate(records) if i not in rule.indices]
        firehose = req.operation == "PutRecordBatch"
        count_key, list_key = (
            ("FailedPutCount", "RequestResponses") if firehose else ("FailedRecordCount", "Records")
        )
        if kept:
            status, headers, body = self._forward(req, json.dumps({**doc, "Records": kept}).encode())
            if status != 200:
                # The service refused the rest of the batch outright: pass that on unchanged.
                return status, headers, body, ()
            answer = json.loads(body)
            if len(answer.get(list_key, [])) != len(kept):
                return status, headers, body, ()  # not a shape we can merge into; pass it on
        else:
            # Nothing left to send (moto would reject an empty batch): answer on its own.
            status = 200
            headers = [
                ("Content-Type", req.json_content_type),
                ("x-amzn-RequestId", str(uuid.uuid4())),
            ]
            answer = {"Encrypted": False} if firehose else {}
        code = rule.code or (
            "ServiceUnavailableException" if firehose else "ProvisionedThroughputExceededException"
        )
        message = rule.message or (
            "Slow down."
            if firehose
            else f"Rate exceeded for shard in stream {_stream_name(doc)} under account {ACCOUNT_ID}."
        )
        accepted = iter(answer.get(list_key, []))
        merged = [
            {"ErrorCode": code, "ErrorMessage": message} if i in failed else next(accepted)
            for i in range(len(records))
        ]
        answer[list_key] = merged
        answer[count_key] = int(answer.get(count_key, 0)) + len(failed)
        return status, headers, json.dumps(answer).encode(), failed

    def _large_put(self, req: _Request, stream: str, limit: int
                   ) -> tuple[int, list[tuple[str, str]], bytes]:
        """PutRecords to a large-record stream, by AWS's rules (see FaultProxy.large_records)."""
        doc = json.loads(req.body)
        records = [(base64.b64decode(r.get("Data", "")), str(r.get("PartitionKey", "")))
                   for r in doc.get("Records", [])]
        problem = None
        if not 1 <= len(records) <= 500:
            problem = (f"1 validation error detected: Value at 'records' failed to satisfy "
                       f"constraint: Member must have length between 1 and 500 ({len(records)})")
        total = 0
        for index, (data, key) in enumerate(records):
            size = len(data) + len(key.encode())
            total += size
            if problem is None and not 1 <= len(key) <= 256:
                problem = (f"1 validation error detected: Value at 'records.{index + 1}.member."
                           f"partitionKey' failed to satisfy constraint: Member must have length "
                           f"between 1 and 256")
            if problem is None and size > limit:
                problem = (f"1 validation error detected: Value at 'records.{index + 1}.member."
                           f"data' failed to satisfy constraint: Member must have length less "
                           f"than or equal to {limit} (with its partition key: {size})")
        if problem is None and total > LARGE_REQUEST_BYTES:
            problem = (f"Records size exceeds {LARGE_REQUEST_BYTES} bytes for request "
                       f"(got {total})")
        if problem is not None:
            return _error_response(req, "ValidationException", 400, problem)
        first = self.server.proxy._keep_large(stream, records)
        answer = {"FailedRecordCount": 0, "EncryptionType": "NONE", "Records": [
            {"SequenceNumber": f"{49_000_000_000 + first + i:056d}",
             "ShardId": "shardId-000000000000"} for i in range(len(records))]}
        return 200, [("Content-Type", req.json_content_type),
                     ("x-amzn-RequestId", str(uuid.uuid4()))], json.dumps(answer).encode()

    # -- upstream -----------------------------------------------------------------------------

    def _forward(self, req: _Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        # A fresh upstream connection per call: simple, and no stale-connection edge cases
        # between the proxy and moto to confuse the faults that are being tested.
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
        )
        try:
            conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
            for name, value in req.headers:
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or req.method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()  # http.client undoes chunked framing
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if req.method == "HEAD":
                # No body to measure: keep the upstream's declared length.
                length = resp.getheader("Content-Length")
                if length is not None:
                    headers.append(("Content-Length", length))
            return resp.status, headers, data
        except (OSError, http.client.HTTPException) as exc:
            return _error_response(req, "BadGateway", 502, f"FaultProxy upstream: {exc}")
        finally:
            conn.close()

    # -- answer -------------------------------------------------------------------------------

    def _respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                # Always a Content-Length: with HTTP/1.1 keep-alive the client has no other
                # way to find the end of the body.
                self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and status >= 200 and status not in (204, 304):
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            # The client went away (e.g. it timed out during a delay); nothing to tell it.
            self.close_connection = True

    def _close(self) -> None:
        """End the connection without a response; the server then shuts and closes it."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


def _defaults(rule: _Rule, req: _Request) -> tuple[str, int, str]:
    """Error code, status and message for a throttle/error rule on this request."""
    service = req.service or ""
    if rule.kind == "throttle":
        if rule.code:
            code, message = rule.code, rule.message or "Rate exceeded"
        elif service == "kinesis":
            stream = "unknown"
            with contextlib.suppress(ValueError, TypeError):
                stream = _stream_name(json.loads(req.body))
            code = "ProvisionedThroughputExceededException"
            message = f"Rate exceeded for shard in stream {stream} under account {ACCOUNT_ID}."
        elif service == "firehose":
            code, message = "ServiceUnavailableException", "Slow down."
        elif req.protocol == "query":
            code, message = "Throttling", "Rate exceeded"
        elif req.protocol == "rest":
            code, message = "SlowDown", "Please reduce your request rate."
        else:
            code, message = "ThrottlingException", "Rate exceeded"
        return code, rule.status or _status_for_code(code), rule.message or message
    status = rule.status or 500
    if rule.code:
        code = rule.code
    elif status == 503:
        code = "ServiceUnavailable"
    elif req.protocol == "rest":
        code = "InternalError"
    else:
        code = "InternalFailure"
    message = rule.message or ("Service unavailable" if status == 503 else "Internal service failure.")
    return code, status, message


def _error_response(
    req: _Request, code: str, status: int, message: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An error answer in the request's protocol, shaped as AWS sends it."""
    request_id = str(uuid.uuid4())
    if req.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        return (
            status,
            [
                ("Content-Type", req.json_content_type),
                ("x-amzn-RequestId", request_id),
                ("x-amzn-ErrorType", code),
            ],
            body,
        )
    if req.protocol == "query":
        fault = "Receiver" if status >= 500 else "Sender"
        xml = (
            f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>{fault}</Type><Code>{xml_escape(code)}</Code>"
            f"<Message>{xml_escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return (
            status,
            [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)],
            xml.encode(),
        )
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{xml_escape(code)}</Code>'
        f"<Message>{xml_escape(message)}</Message><RequestId>{request_id}</RequestId></Error>"
    )
    return (
        status,
        [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)],
        xml.encode(),
    )
