"""AWS access: the seed's credential order, STS assume-role refresh, proxy, endpoints and regions.

Only the flusher thread uses this module; it owns the clients and the credentials they carry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import boto3
import botocore.configloader
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    ConfigProvider,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    EnvProvider,
    InstanceMetadataFetcher,
    InstanceMetadataProvider,
    SharedCredentialProvider,
)
from botocore.exceptions import BotoCoreError, ClientError

from ._errors import DeliveryError
from ._settings import Settings

log = logging.getLogger("osquery_aws_logger.aws")

DEFAULT_REGION: Final = "us-east-1"
#: Renew assumed-role credentials this share of their lifetime before they expire (at most
#: MAX_REFRESH_MARGIN): 180 s for a 900 s session, 300 s for an hour, a second for test ones.
REFRESH_MARGIN_SHARE: Final = 0.2
MAX_REFRESH_MARGIN: Final = 300.0


@dataclass(frozen=True)
class ResolvedCredentials:
    """Credentials and the name of the source they came from (never the secret itself)."""

    credentials: Credentials
    source: str
    expires_at: float | None = None  # epoch seconds, for assumed-role credentials


def _shared_files(environ: Mapping[str, str]) -> tuple[str, str]:
    credentials = environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    config = environ.get("AWS_CONFIG_FILE", "~/.aws/config")
    return os.path.expanduser(credentials), os.path.expanduser(config)


def _profile_credentials(profile: str, environ: Mapping[str, str]) -> Credentials | None:
    credentials_file, config_file = _shared_files(environ)
    for provider in (SharedCredentialProvider(credentials_file, profile),
                     ConfigProvider(config_file, profile,
                                    botocore.configloader.load_config)):
        found = provider.load()
        if found is not None:
            return found
    return None


def credential_sources(settings: Settings, environ: Mapping[str, str]
                       ) -> list[tuple[str, Callable[[], Credentials | None]]]:
    """The seed's credential order, each source a name and a loader answering None when absent."""

    def from_flags() -> Credentials | None:
        if settings.aws_access_key_id and settings.aws_secret_access_key:
            return Credentials(settings.aws_access_key_id, settings.aws_secret_access_key,
                               settings.aws_session_token or None, method="osquery-flags")
        return None

    def from_named_profile() -> Credentials | None:
        if not settings.aws_profile_name:
            return None
        return _profile_credentials(settings.aws_profile_name, environ)

    def from_environment() -> Credentials | None:
        return EnvProvider(environ=dict(environ)).load()

    def from_default_profile() -> Credentials | None:
        return _profile_credentials("default", environ)

    def from_instance_metadata() -> Credentials | None:
        config = {}
        endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        if endpoint:
            config["ec2_metadata_service_endpoint"] = endpoint
        fetcher = InstanceMetadataFetcher(timeout=1, num_attempts=2, env=dict(environ),
                                          config=config)
        return InstanceMetadataProvider(iam_role_fetcher=fetcher).load()

    return [
        ("flags", from_flags),
        (f"profile:{settings.aws_profile_name}", from_named_profile),
        ("environment", from_environment),
        ("profile:default", from_default_profile),
        ("instance-metadata", from_instance_metadata),
    ]


def resolve_credentials(settings: Settings, environ: Mapping[str, str]) -> ResolvedCredentials | None:
    """The first source of the seed's order that gives a whole key pair; None if none does.

    A source that is absent, incomplete (one key of a pair) or unreadable falls through.
    """
    for name, load in credential_sources(settings, environ):
        try:
            found = load()
        except (BotoCoreError, OSError, ValueError, KeyError) as exc:
            log.debug("credential source %s unusable: %s", name, type(exc).__name__)
            continue
        if found is not None and found.access_key and found.secret_key:
            return ResolvedCredentials(found, name)
    return None


def profile_region(settings: Settings, environ: Mapping[str, str]) -> str:
    """The region of the named profile (or the default one) in the AWS config file, if any."""
    _, config_file = _shared_files(environ)
    try:
        profiles = botocore.configloader.load_config(config_file).get("profiles", {})
    except (BotoCoreError, OSError):
        return ""
    profile = profiles.get(settings.aws_profile_name or "default", {})
    return str(profile.get("region", ""))


def service_region(service: str, settings: Settings, environ: Mapping[str, str]) -> str:
    """Region for "kinesis", "firehose" or "sts": its own flag, aws_region, the profile, us-east-1."""
    own = settings.service(service).region if service in ("kinesis", "firehose") else ""
    return own or settings.aws_region or profile_region(settings, environ) or DEFAULT_REGION


def client_config(settings: Settings, *, read_timeout: float) -> Config:
    """botocore settings shared by every client: no retries of its own, bounded timeouts, proxy."""
    proxies = None
    if settings.aws_enable_proxy and settings.aws_proxy_host and settings.aws_proxy_port:
        auth = ""
        if settings.aws_proxy_username:
            # urllib3 takes BasicAuth from the URL; the URL goes to botocore only, never to a log.
            auth = quote(settings.aws_proxy_username, safe="")
            if settings.aws_proxy_password:
                auth += ":" + quote(settings.aws_proxy_password, safe="")
            auth += "@"
        url = f"{settings.aws_proxy_scheme}://{auth}{settings.aws_proxy_host}:{settings.aws_proxy_port}"
        proxies = {"http": url, "https": url}
    return Config(
        # The flusher owns retrying (backoff as state, only failed entries resent); botocore
        # retrying underneath as well would multiply attempts and block the loop.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
        proxies=proxies,
        tcp_keepalive=True,
        # Requests are built by the flusher from checked records; validating each of 500
        # records again on every call is a large share of botocore's cost per record.
        parameter_validation=False,
        user_agent_extra="osquery-aws-logger",
    )


class _FixedProvider(CredentialProvider):  # type: ignore[misc]
    METHOD = "osquery-aws-logger"

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


def _session_with(credentials: Credentials) -> boto3.session.Session:
    """A boto3 session that uses exactly these credentials and reads no other source."""
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_FixedProvider(credentials)]))
    return boto3.session.Session(botocore_session=core)


#: The put calls whose JSON body the flusher writes itself (see PreparedBody).
PREPARED_OPERATIONS: Final = {"kinesis": "PutRecords", "firehose": "PutRecordBatch"}


class PreparedBody:
    """Puts a request body the flusher wrote itself in place of botocore's, before signing.

    botocore's JSON serializer walks every record through its shape model: about 17 µs a
    record, most of a delivery's CPU. The flusher joins the same JSON from pre-encoded pieces
    (4 µs) and hands it here; a `before-sign` handler swaps it in, so the request is still
    signed, sent, and its answer parsed by botocore.
    """

    def __init__(self) -> None:
        self.body: bytes | None = None

    def swap(self, request: Any, **_: Any) -> None:
        if self.body is not None:
            request.data, self.body = self.body, None


class AwsClients:
    """The Kinesis and Firehose clients and the credentials behind them, refreshed as needed.

    Belongs to the flusher thread. `client()` raises DeliveryError (retriable) when no
    credentials can be had right now; the records wait in the spool meanwhile.
    """

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time, read_timeout: float = 10.0) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.read_timeout = read_timeout
        self.credential_source = ""
        self.expires_at: float | None = None
        self.assume_role_calls = 0
        self._refresh_at: float | None = None
        self._clients: dict[str, Any] = {}
        self.regions: dict[str, str] = {}
        self._session: boto3.session.Session | None = None
        self._prepared = PreparedBody()
        self._config = client_config(settings, read_timeout=read_timeout)
        self._last_logged_source = ""

    def invalidate(self) -> None:
        """Credentials were refused as expired: get new ones before the next call."""
        self._clients.clear()
        self._refresh_at = 0.0

    def client(self, service: str) -> Any:
        now = self.clock()
        if self._refresh_at is not None and now >= self._refresh_at:
            self._clients.clear()
        cached = self._clients.get(service)
        if cached is not None:
            return cached
        if not self._clients or self._session is None:
            self._session = _session_with(self._credentials(now))
        endpoint = self.settings.service(service).endpoint or None
        region = service_region(service, self.settings, self.environ)
        self.regions[service] = region
        client = self._session.client(service, region_name=region, endpoint_url=endpoint,
                                      config=self._config)
        if service in PREPARED_OPERATIONS:
            client.meta.events.register(
                f"before-sign.{service}.{PREPARED_OPERATIONS[service]}", self._prepared.swap)
        self._clients[service] = client
        return client

    def put_prepared(self, service: str, method: str, params: dict[str, Any], body: bytes) -> Any:
        """Call `method` with `body` as the request's JSON (params only name the stream)."""
        client = self.client(service)
        self._prepared.body = body
        try:
            return getattr(client, method)(**params)
        finally:
            self._prepared.body = None

    def _credentials(self, now: float) -> Credentials:
        base = resolve_credentials(self.settings, self.environ)
        if base is None:
            raise DeliveryError("NoCredentials", "no credentials in any source of the order "
                                "(flags, aws_profile_name, environment, default profile, "
                                "instance metadata)", retriable=True)
        source, credentials = base.source, base.credentials
        self._refresh_at = None
        self.expires_at = None
        if self.settings.aws_sts_arn_role:
            credentials, expires_at = self._assume_role(credentials)
            source = f"sts:{self.settings.aws_sts_arn_role} via {base.source}"
            lifetime = max(0.0, expires_at - now)
            self.expires_at = expires_at
            self._refresh_at = expires_at - min(MAX_REFRESH_MARGIN, lifetime * REFRESH_MARGIN_SHARE)
        if source != self._last_logged_source:
            log.info("AWS credentials from %s", source)
            self._last_logged_source = source
        self.credential_source = source
        return credentials

    def _assume_role(self, base: Credentials) -> tuple[Credentials, float]:
        settings = self.settings
        sts = _session_with(base).client(
            "sts", region_name=settings.aws_sts_region or service_region("sts", settings, self.environ),
            endpoint_url=settings.aws_sts_endpoint or None, config=self._config)
        self.assume_role_calls += 1
        try:
            answer = sts.assume_role(RoleArn=settings.aws_sts_arn_role,
                                     RoleSessionName=settings.aws_sts_session_name or "default",
                                     DurationSeconds=settings.aws_sts_timeout)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise DeliveryError(f"AssumeRole.{code}", "could not assume "
                                f"{settings.aws_sts_arn_role}", retriable=True) from None
        except BotoCoreError as exc:
            raise DeliveryError("AssumeRole.Connection", type(exc).__name__,
                                retriable=True) from None
        found = answer["Credentials"]
        credentials = Credentials(found["AccessKeyId"], found["SecretAccessKey"],
                                  found["SessionToken"], method="assume-role")
        return credentials, found["Expiration"].timestamp()
