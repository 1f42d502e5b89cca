"""AWS access: the seed's credential order, STS assume-role refresh, proxy, endpoints and regions.

Only the flusher thread uses this module; it owns the clients and the credentials they carry.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import boto3
import botocore.awsrequest
import botocore.configloader
import botocore.exceptions
import botocore.loaders
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
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, InvalidIMDSEndpointError
from urllib3.exceptions import LocationParseError

from ..errors import DeliveryError
from ..redact import redact, remember, remember_basic_auth
from ..settings import Settings

log = logging.getLogger("osquery_aws_logger.aws")

DEFAULT_REGION: Final = "us-east-1"
#: Renew assumed-role credentials this share of their lifetime before they expire (at most
#: MAX_REFRESH_MARGIN): 180 s for a 900 s session, 300 s for an hour, a second for test ones.
REFRESH_MARGIN_SHARE: Final = 0.2
MAX_REFRESH_MARGIN: Final = 300.0
#: The host's own trust stores, first found wins (Debian/Ubuntu/Alpine, RHEL/Fedora/Amazon
#: Linux, openSUSE, older RHEL): a TLS-inspecting corporate proxy's CA is installed there.
HOST_CA_BUNDLES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)
#: Each connect attempt's limit (see client_config); named in timeout messages.
CONNECT_TIMEOUT_SECONDS: Final = 5
#: Each instance metadata request's limit (botocore's own default).
IMDS_TIMEOUT_SECONDS: Final = 1
#: Longest single wait between IMDSv2 token attempts. osquery multiplies the wait by
#: aws_imdsv2_request_interval after each failure without a bound; past a minute the flusher,
#: which waits here, would hold every plugin's delivery (and a prompt stop) for too long.
MAX_IMDS_WAIT_SECONDS: Final = 60.0


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


class ImdsFetcher(InstanceMetadataFetcher):  # type: ignore[misc]
    """botocore's instance metadata fetcher with osquery's IMDSv2 token policy.

    botocore asks for a token `num_attempts` times back to back and, on a 403/404/405 or a
    timeout, gives up at once and falls back to IMDSv1 (GETs without a token). osquery 5.x
    (getIMDSToken) makes `aws_imdsv2_request_attempts` attempts, waiting
    `aws_imdsv2_request_interval` seconds after the first failure and multiplying the wait by
    that interval after each further one; with `aws_disable_imdsv1_fallback` no request is
    made without a token. botocore's own `ec2_metadata_v1_disabled` refuses a tokenless GET
    before it is sent, so only the token attempts are replaced here.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str], *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        config: dict[str, Any] = {"ec2_metadata_v1_disabled": settings.aws_disable_imdsv1_fallback}
        endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        if endpoint:
            config["ec2_metadata_service_endpoint"] = endpoint
        # num_attempts is botocore's for each GET (with a token); the token's are ours.
        super().__init__(timeout=IMDS_TIMEOUT_SECONDS, num_attempts=2, env=dict(environ),
                         config=config)
        self.attempts = settings.aws_imdsv2_request_attempts
        self.interval = settings.aws_imdsv2_request_interval
        self.sleep = sleep
        #: Token requests made and the waits between them (for the tests and the log line).
        self.token_requests = 0
        self.waits: list[float] = []

    def _fetch_metadata_token(self) -> str | None:
        self._assert_enabled()
        url = self._construct_url(self._TOKEN_PATH)
        headers = {"x-aws-ec2-metadata-token-ttl-seconds": self._TOKEN_TTL}
        self._add_user_agent(headers)
        request = botocore.awsrequest.AWSRequest(method="PUT", url=url, headers=headers)
        wait = float(self.interval)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            self.token_requests += 1
            try:
                response = self._session.send(request.prepare())
                if response.status_code == 200 and response.text:
                    return str(response.text)
                reason = f"HTTP {response.status_code}"
            except HTTPClientError as exc:
                if isinstance(exc.kwargs.get("error"), LocationParseError):
                    raise InvalidIMDSEndpointError(endpoint=url, error=exc) from None
                reason = type(exc).__name__
            if attempt < self.attempts:
                # osquery also waits after the last attempt, before giving up: no use here.
                pause = min(wait, MAX_IMDS_WAIT_SECONDS)
                self.waits.append(pause)
                self.sleep(pause)
                wait *= self.interval
        log.info("no IMDSv2 token from %s after %d attempts (last: %s); %s", url, self.attempts,
                 reason, "no instance metadata request is made without one "
                 "(aws_disable_imdsv1_fallback)" if self._imds_v1_disabled
                 else "falling back to IMDSv1")
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
        fetcher = ImdsFetcher(settings, environ)
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
            # Whatever the source, its secret must never be echoed back into a log line.
            remember(found.secret_key, found.token)
            return ResolvedCredentials(found, name)
    return None


def missing_halves(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Sources that hold one half of a key pair: "aws_access_key_id is set but ..."."""
    gaps = []
    pairs = (("flags", settings.aws_access_key_id, settings.aws_secret_access_key,
              "aws_access_key_id", "aws_secret_access_key"),
             ("environment", environ.get("AWS_ACCESS_KEY_ID", ""),
              environ.get("AWS_SECRET_ACCESS_KEY", ""),
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    for source, key_id, secret, id_name, secret_name in pairs:
        if key_id and not secret:
            gaps.append(f"{source}: {id_name} is set but {secret_name} is missing")
        elif secret and not key_id:
            gaps.append(f"{source}: {secret_name} is set but {id_name} is missing")
    return gaps


def no_credentials_message(settings: Settings, environ: Mapping[str, str]) -> str:
    gaps = missing_halves(settings, environ)
    if gaps:
        return "incomplete key pair (" + "; ".join(gaps) + "), and no other source has one"
    return ("none in any source (flags, aws_profile_name, environment, default profile, "
            "instance metadata)")


def ca_bundle(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The CA file TLS to AWS is checked against: the option, AWS_CA_BUNDLE, the host's store.

    None means botocore's own bundle (a host without a trust store at a known path).
    """
    if settings.aws_logger_ca_bundle:
        return settings.aws_logger_ca_bundle
    if environ.get("AWS_CA_BUNDLE"):
        return environ["AWS_CA_BUNDLE"]
    for path in HOST_CA_BUNDLES:
        if os.path.isfile(path):
            return path
    return None


def _reason(error: object) -> str:
    """The last, most specific part of a urllib3/socket error text, redacted."""
    text = redact(str(error or ""))
    # urllib3 wraps: "<urllib3.connection.HTTPConnection object at 0x..>: Failed to establish
    # a new connection: [Errno 111] Connection refused"; the tail is the reason.
    return text.rsplit(": ", 1)[-1].strip() if ": " in text else text.strip()


def connection_error(exc: BotoCoreError, *, read_timeout: float | None = None) -> tuple[str, str]:
    """A connection failure as (cause, message): the URL and why (refused, DNS, TLS, proxy,
    timeout, closed). The message is redacted; it may quote what a proxy or socket said."""
    kwargs = getattr(exc, "kwargs", {}) or {}
    url = redact(str(kwargs.get("endpoint_url") or ""))
    error = kwargs.get("error")
    text = redact(str(error or ""))
    lowered = text.lower()
    if isinstance(exc, botocore.exceptions.ProxyConnectionError):
        proxy = redact(str(kwargs.get("proxy_url") or ""))
        return "proxy", f"cannot connect through the proxy {proxy}: {_reason(error)}"
    if isinstance(exc, botocore.exceptions.SSLError):
        found = re.search(r"\[SSL: [A-Z_]+\][^(\]'\"]*", text)
        detail = found.group(0).strip() if found else _reason(error)
        return "TLS", (f"TLS to {url} failed: {detail} (the CA bundle in use is set by "
                       "aws_logger_ca_bundle, AWS_CA_BUNDLE, or the host's trust store)")
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return "timeout", f"no connection to {url} within {CONNECT_TIMEOUT_SECONDS}s"
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        within = f" within {read_timeout:g}s" if read_timeout else ""
        return "timeout", f"no answer from {url}{within}"
    if isinstance(exc, botocore.exceptions.ConnectionClosedError):
        return "closed", f"{url} closed the connection before answering"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        if isinstance(error, socket.gaierror) or any(marker in lowered for marker in (
                "name or service not known", "nodename nor servname", "name resolution",
                "no address associated", "getaddrinfo")):
            host = urlsplit(url).hostname or url
            return "DNS", f"cannot resolve {host} (for {url}): {_reason(error)}"
        if "refused" in lowered:
            return "refused", f"connection to {url} refused: nothing listens there"
        if "unreachable" in lowered or "no route" in lowered:
            return "unreachable", f"{url} is unreachable: {_reason(error)}"
        return "connect", f"cannot connect to {url}: {_reason(error)}"
    return "connection", redact(str(exc))[:300]


def profile_region(settings: Settings, environ: Mapping[str, str]) -> str:
    """The region of the named profile (or the default one) in the AWS config file, if any."""
    _, config_file = _shared_files(environ)
    try:
        profiles = botocore.configloader.load_config(config_file).get("profiles", {})
    except (BotoCoreError, OSError):
        return ""
    profile = profiles.get(settings.aws_profile_name or "default", {})
    return str(profile.get("region", ""))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the client of one AWS service goes, as the settings say: botocore's name for the
    service, its own region and custom endpoint (empty: fall back), and the options that set
    them (named in messages). A delivery service's comes from its `Service`; STS's from here."""

    service: str
    region: str = ""
    region_option: str = ""
    custom: str = ""
    custom_option: str = ""


def sts_endpoint(settings: Settings) -> Endpoint:
    return Endpoint("sts", settings.aws_sts_region, "aws_sts_region", settings.aws_sts_endpoint,
                    "aws_sts_endpoint")


def service_region(target: Endpoint, settings: Settings, environ: Mapping[str, str]) -> str:
    """A client's region: its own option, aws_region, the profile's, us-east-1."""
    return target.region or settings.aws_region or profile_region(settings, environ) or DEFAULT_REGION


class EndpointRefused(ValueError):
    """No endpoint may be used for a service with these settings (aws_enforce_fips)."""


@functools.lru_cache(maxsize=1)
def _endpoint_data() -> dict[str, Any]:
    """botocore's own endpoints.json: partitions, their regions, each service's endpoints."""
    data: dict[str, Any] = botocore.loaders.create_loader().load_data("endpoints")
    return data


def _partition(region: str) -> dict[str, Any] | None:
    for partition in _endpoint_data()["partitions"]:
        if region in partition.get("regions", {}) or re.fullmatch(partition["regionRegex"], region):
            return dict(partition)
    return None


def _hostname(template: str, service: str, region: str, dns_suffix: str) -> str:
    return template.replace("{service}", service).replace("{region}", region).replace(
        "{dnsSuffix}", dns_suffix)


def fips_endpoint(service: str, region: str) -> str | None:
    """The FIPS endpoint of `service` in `region` that botocore's endpoint data lists, or None.

    Only endpoints the data names for this service count: a partition's generic
    `{service}-fips.{region}` pattern exists for every region, whether or not the service runs
    a FIPS endpoint there. In GovCloud the data names the plain Kinesis and STS hosts as
    their FIPS endpoints, as osquery's enableFIPSInClientConfig says.
    """
    partition = _partition(region)
    if partition is None:
        return None
    entry = partition["services"].get(service, {})
    endpoint = entry.get("endpoints", {}).get(region)
    if endpoint is None or endpoint.get("deprecated"):
        return None
    for variant in [*endpoint.get("variants", []), *entry.get("defaults", {}).get("variants", [])]:
        if variant.get("tags") == ["fips"] and variant.get("hostname"):
            suffix = variant.get("dnsSuffix") or partition["dnsSuffix"]
            return "https://" + _hostname(variant["hostname"], service, region, suffix)
    return None


def fips_regions(service: str) -> list[str]:
    """Every region where botocore's endpoint data lists a FIPS endpoint for `service`."""
    regions = {region for partition in _endpoint_data()["partitions"]
               for region in partition["services"].get(service, {}).get("endpoints", {})}
    return sorted(r for r in regions if _partition(r) is not None and fips_endpoint(service, r))


def standard_endpoint(service: str, region: str) -> str:
    """AWS's own endpoint of `service` in `region`, as botocore builds it without FIPS."""
    partition = _partition(region) or _endpoint_data()["partitions"][0]
    entry = partition["services"].get(service, {})
    endpoint = entry.get("endpoints", {}).get(region, {})
    template = (endpoint.get("hostname") or entry.get("defaults", {}).get("hostname")
                or partition["defaults"]["hostname"])
    return "https://" + _hostname(template, service, region, partition["dnsSuffix"])


def endpoint_for(target: Endpoint, region: str, settings: Settings) -> str:
    """The URL the client for `target` in `region` sends to: a custom endpoint, the FIPS one
    with aws_enforce_fips, else AWS's own. Pure (botocore's endpoint data aside).

    Raises EndpointRefused with aws_enforce_fips when the region has no FIPS endpoint for the
    service, or a custom endpoint is set: nothing may then be sent at all.
    """
    service, option, custom = target.service, target.custom_option, target.custom
    if not settings.aws_enforce_fips:
        return custom or standard_endpoint(service, region)
    if custom:
        raise EndpointRefused(fips_custom_refusal(option))
    found = fips_endpoint(service, region)
    if found is None:
        raise EndpointRefused(
            f"aws_enforce_fips=true: {service} has no FIPS endpoint in {region} (botocore's "
            f"endpoint data lists one in {', '.join(fips_regions(service))}); set "
            f"{target.region_option} or aws_region to one of them")
    return found


def fips_custom_refusal(option: str) -> str:
    """Why a custom endpoint is refused with aws_enforce_fips (osquery refuses it too)."""
    return (f"aws_enforce_fips=true and {option} cannot be used together: a custom endpoint "
            f"cannot be checked to be FIPS (osquery: \"Cannot override the endpoint when FIPS "
            f"is enforced\"); unset {option} or aws_enforce_fips")


def client_config(settings: Settings, *, read_timeout: float) -> Config:
    """botocore settings shared by every client: no retries of its own, bounded timeouts, proxy."""
    proxies = None
    # Learnt even when the proxy is off: a later switch on must not find it unknown.
    remember_basic_auth(settings.aws_proxy_username, settings.aws_proxy_password)
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
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
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

    def __init__(self, settings: Settings, targets: Mapping[str, Endpoint], *,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time,
                 read_timeout: float = 10.0) -> None:
        self.settings = settings
        #: Where each service's client goes, by botocore's service name (see Service.endpoint).
        self.targets = dict(targets)  # required: without it every client would go to AWS
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.read_timeout = read_timeout
        self.credential_source = ""
        self.expires_at: float | None = None
        self.assume_role_calls = 0
        self._refresh_at: float | None = None
        self._clients: dict[str, Any] = {}
        self.regions: dict[str, str] = {}
        #: The URL each client sends to (endpoint_for), once it is made: the status table's.
        self.endpoints: dict[str, str] = {}
        self._session: boto3.session.Session | None = None
        self._prepared = PreparedBody()
        self._config = client_config(settings, read_timeout=read_timeout)
        self._last_logged_source = ""
        #: The CA file clients check TLS against (None: botocore's own bundle).
        self.verify = ca_bundle(settings, self.environ)
        remember(settings.aws_secret_access_key, settings.aws_session_token)

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
        target = self.targets.get(service) or Endpoint(service)
        region = service_region(target, self.settings, self.environ)
        self.regions[service] = region
        # Before credentials: with FIPS enforced, a service without a FIPS endpoint here must
        # not even reach STS.
        url = self._endpoint(target, region)
        if not self._clients or self._session is None:
            self._session = _session_with(self._credentials(now))
        # AWS's own non-FIPS endpoint is left to botocore's resolution; `url` is what it picks.
        explicit = self.settings.aws_enforce_fips or bool(target.custom)
        client = self._session.client(service, region_name=region,
                                      endpoint_url=url if explicit else None,
                                      config=self._config, verify=self.verify)
        # Any call of the service may carry a body the flusher wrote (put_prepared); the swap
        # does nothing for the others.
        client.meta.events.register(f"before-sign.{service}", self._prepared.swap)
        self._clients[service] = client
        return client

    def _endpoint(self, target: Endpoint, region: str) -> str:
        """endpoint_for, recorded for the status table; a refusal is an operator's to fix."""
        try:
            url = endpoint_for(target, region, self.settings)
        except EndpointRefused as exc:
            self.endpoints.pop(target.service, None)
            raise DeliveryError("FipsEndpoint", str(exc), retriable=False) from None
        self.endpoints[target.service] = url
        return url

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
            raise DeliveryError("NoCredentials", no_credentials_message(self.settings, self.environ),
                                retriable=True)
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
        target = sts_endpoint(settings)
        region = service_region(target, settings, self.environ)
        url = self._endpoint(target, region)
        explicit = settings.aws_enforce_fips or bool(target.custom)
        sts = _session_with(base).client(
            "sts", region_name=region, endpoint_url=url if explicit else None,
            config=self._config, verify=self.verify)
        self.assume_role_calls += 1
        try:
            answer = sts.assume_role(RoleArn=settings.aws_sts_arn_role,
                                     RoleSessionName=settings.aws_sts_session_name or "default",
                                     DurationSeconds=settings.aws_sts_timeout)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "ClientError")
            said = redact(str(error.get("Message") or ""))[:300]
            raise DeliveryError(f"AssumeRole.{code}", f"could not assume "
                                f"{settings.aws_sts_arn_role}" + (f": {said}" if said else ""),
                                retriable=True) from None
        except BotoCoreError as exc:
            cause, message = connection_error(exc, read_timeout=self.read_timeout)
            raise DeliveryError("AssumeRole.Connection", f"{cause}: {message}",
                                retriable=True) from None
        found = answer["Credentials"]
        # Renewed credentials are new secrets: known before anything can echo them.
        remember(found["SecretAccessKey"], found["SessionToken"])
        credentials = Credentials(found["AccessKeyId"], found["SecretAccessKey"],
                                  found["SessionToken"], method="assume-role")
        return credentials, found["Expiration"].timestamp()
