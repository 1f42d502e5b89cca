"""One typed, validated settings object built from osquery's options under osquery's own names.

Each option is declared once, as a field of `Settings` (`option(...)`: osquery's name, its
type, default, parser and help); `OPTIONS` is derived from those fields, and the command-line
flags, `check` and the README's table from or against `OPTIONS`. Per-service options reach the
delivery code through the typed view each `Service` builds (`_service`), never through names.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import SettingsError
from .redact import MASK

#: How much of an unusable value a problem quotes.
SHOWN_VALUE_CHARS: Final = 80

#: Prefix under which osqueryd keeps config options it does not define itself; on a build made
#: without AWS support this is the only way a config file's option reaches the extension.
CUSTOM_PREFIX: Final = "custom_"

PROXY_SCHEMES: Final = ("http", "https")
STS_TIMEOUT_RANGE: Final = (900, 3600)

# Upper bounds of the numeric options. osquery's own aws_kinesis_period and buffered_log_max are
# uint64 flags, so osqueryd accepts anything up to 2^64-1 and a typo (an extra few digits, a
# value in milliseconds) would pass; past these bounds no value is a setting anyone means.
#: A day: a longer period keeps rows on the host past the point anyone reads them as current.
MAX_PERIOD_SECONDS: Final = 86_400
#: A billion records: over a hundred GB of spool at a typical 100-200 bytes per row.
MAX_BUFFERED_LOG: Final = 10**9
#: 1 TiB of spool per plugin.
MAX_SPOOL_BYTES: Final = 1 << 40
#: An hour; osqueryd itself SIGKILLs an extension ~11 s after asking it to stop.
MAX_SHUTDOWN_SECONDS: Final = 3_600

#: osquery's own aws_* flags that this extension does not read (osquery/utils/aws/aws_util.cpp,
#: 5.x). A stock osqueryd reports every flag it defines, so these are known, not typos. Every
#: aws_* flag of osquery 5.x applies to an extension's AWS clients, so none is left here.
OSQUERY_AWS_FLAGS_NOT_READ: Final[frozenset[str]] = frozenset()

#: aws_imdsv2_request_attempts: osquery refuses 0 (validateIMDSV2RequestAttempts); past ten
#: attempts the waits between them (multiplied by the interval each time) run to hours.
MAX_IMDS_ATTEMPTS: Final = 10
#: aws_imdsv2_request_interval, in seconds: osquery's uint32 takes 0 (no wait) and up.
MAX_IMDS_INTERVAL: Final = 60
#: Kinesis's maximum record size as UpdateMaxRecordSize takes it (MaxRecordSizeInKiB):
#: 1024 (the default of every stream) to 10240.
KINESIS_RECORD_KIB_RANGE: Final = (1024, 10240)

#: AWS region names: us-east-1, eu-central-2, us-gov-west-1, cn-north-1, us-isob-east-1.
_REGION = re.compile(r"[a-z]{2}(-[a-z]+){1,3}-[0-9]{1,2}")
#: One DNS label, as botocore checks an endpoint's host (letters, digits, inner hyphens).
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DIGITS = re.compile(r"[0-9]+")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    # osquery's gflags accept these spellings for boolean flags.
    if lowered in ("true", "1", "yes", "y", "t", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "f", "off", ""):
        return False
    raise ValueError("expected true or false")


def _whole_number(text: str, high: int, unit: str) -> int:
    """A whole number from 1 to `high`; the message says the range and never quotes the text."""
    value = text.strip()
    expected = f"expected a whole number of {unit} from 1 to {high}"
    # Digits only (no sign, no "1_000"); a long digit string is out of range without int(),
    # which refuses more than 4300 digits with a message of its own.
    if not _DIGITS.fullmatch(value):
        raise ValueError(expected)
    if len(value.lstrip("0")) > len(str(high)) or not 1 <= int(value) <= high:
        raise ValueError(f"out of range: {expected}")
    return int(value)


def _parse_period(text: str) -> int:
    return _whole_number(text, MAX_PERIOD_SECONDS, "seconds")


def _parse_buffered_log_max(text: str) -> int:
    return _whole_number(text, MAX_BUFFERED_LOG, "records")


def _parse_spool_bytes(text: str) -> int:
    return _whole_number(text, MAX_SPOOL_BYTES, "bytes (1 TiB)")


def _parse_shutdown_timeout(text: str) -> int:
    return _whole_number(text, MAX_SHUTDOWN_SECONDS, "seconds")


def _parse_port(text: str) -> int | None:
    # osquery defines FLAG(uint32, aws_proxy_port, 0): a stock osqueryd reports 0 when unset.
    if not text.strip() or text.strip() == "0":
        return None
    value = int(text.strip())
    if not 1 <= value <= 65535:
        raise ValueError("expected a port number 1-65535")
    return value


def _parse_imds_attempts(text: str) -> int:
    return _whole_number(text, MAX_IMDS_ATTEMPTS, "attempts")


def _parse_imds_interval(text: str) -> int:
    value = text.strip()
    if value == "0":
        return 0  # osquery takes 0: attempts back to back
    return _whole_number(value, MAX_IMDS_INTERVAL, "seconds (or 0)")


def _parse_record_kib(text: str) -> int:
    """MaxRecordSizeInKiB of the stream, as Kinesis takes it: 1024 to 10240."""
    low, high = KINESIS_RECORD_KIB_RANGE
    value = text.strip()
    expected = f"expected the stream's MaxRecordSizeInKiB, a whole number from {low} to {high}"
    if not _DIGITS.fullmatch(value) or len(value) > 6 or not low <= int(value) <= high:
        raise ValueError(expected)
    return int(value)


def _parse_sts_timeout(text: str) -> int:
    value = int(text.strip())
    low, high = STS_TIMEOUT_RANGE
    if not low <= value <= high:
        raise ValueError(f"expected seconds between {low} and {high}")
    return value


def _parse_scheme(text: str) -> str:
    value = text.strip().lower()
    if value not in PROXY_SCHEMES:
        raise ValueError("expected http or https")
    return value


_ENDPOINT_EXPECTED: Final = ("expected an http:// or https:// URL with a host and, if any, a port "
                             "1-65535, like https://kinesis.us-east-1.amazonaws.com")


def _valid_host(host: str) -> bool:
    """An IP address or a DNS name: what botocore accepts for an endpoint's host."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def _parse_endpoint(text: str) -> str:
    """An endpoint URL that botocore will take: a half-parsed one would otherwise pass here and
    fail at every client build as "ValueError: Invalid endpoint", retried for ever."""
    value = text.strip()
    if not value:
        return value
    if any(c <= " " or c == "\x7f" for c in value):
        raise ValueError(f"contains spaces or control characters: {_ENDPOINT_EXPECTED}")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises for a port that is not a number or beyond 65535
    except ValueError:
        # urlsplit's own text quotes the value: say what is wrong in general terms instead.
        raise ValueError(f"does not parse as a URL (unclosed [ or a bad port): "
                         f"{_ENDPOINT_EXPECTED}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not http or https: {_ENDPOINT_EXPECTED}")
    if not parts.hostname:
        raise ValueError(f"no host: {_ENDPOINT_EXPECTED}")
    if not _valid_host(parts.hostname):
        raise ValueError(f"the host is not a DNS name or IP address: {_ENDPOINT_EXPECTED}")
    if port == 0:
        raise ValueError(f"port 0: {_ENDPOINT_EXPECTED}")
    return value


def _parse_region(text: str) -> str:
    """An AWS region name, or empty (fall back to the next source of a region)."""
    value = text.strip()
    if value and not _REGION.fullmatch(value):
        raise ValueError("expected an AWS region name like us-east-1, eu-central-2 or "
                         "us-gov-west-1, or empty")
    return value


def _parse_spool_dir(text: str) -> str:
    """The spool's directory: a relative one would land wherever the process was started."""
    value = text.strip()
    if not value:
        raise ValueError("empty: expected an absolute directory path, like /var/osquery/aws_logger")
    if not os.path.isabs(value) or "\0" in value:
        raise ValueError("expected an absolute directory path, like /var/osquery/aws_logger")
    return value


def _parse_metrics_file(text: str) -> str:
    """Empty (no metrics file) or where node_exporter's textfile collector looks: *.prom."""
    value = text.strip()
    if value and (not os.path.isabs(value) or not value.endswith(".prom") or "\0" in value):
        raise ValueError("expected an absolute path of a .prom file (node_exporter's textfile "
                         "collector reads only *.prom), or empty")
    return value


def _parse_ca_bundle(text: str) -> str:
    """Empty (AWS_CA_BUNDLE, else the host's store) or an absolute path to a CA file.

    Whether the file exists is not checked here: config management may put it in place after
    osqueryd starts, and the settings are read again at each logger init. A missing file is
    named by the TLS error of the first connection ("No such file or directory"), in the log,
    the status table and `check`.
    """
    value = text.strip()
    if value and (not os.path.isabs(value) or "\0" in value):
        raise ValueError("expected an absolute path to a PEM CA bundle file, or empty")
    return value


#: Longest plugin suffix: the plugin names stay far below the longest name a call may carry
#: (_wire.MAX_NAME_BYTES; a longer one is answered "no such plugin" unread).
MAX_SUFFIX_CHARS: Final = 100


def _parse_suffix(text: str) -> str:
    value = text.strip()
    if value and not all(c.isalnum() or c == "_" for c in value):
        raise ValueError("expected letters, digits and underscores")
    if len(value) > MAX_SUFFIX_CHARS:
        raise ValueError(f"expected at most {MAX_SUFFIX_CHARS} letters, digits and underscores")
    return value


def _parse_str(text: str) -> str:
    return text.strip()


def _parse_log_format(text: str) -> str:
    value = text.strip().lower() or "text"
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


Routes = tuple[tuple[str, tuple[str, ...]], ...]


def _parse_routes(text: str) -> Routes:
    """A JSON object {"stream": ["query name", "pack_name_*", ...]} like osquery's kafka_topics."""
    if not text.strip():
        return ()
    try:
        document = json.loads(text)
    except ValueError:
        raise ValueError('expected JSON like {"stream": ["query_name", "pack_x_*"]}') from None
    if not isinstance(document, dict) or not all(
            isinstance(k, str) and k and isinstance(v, list) and all(isinstance(n, str) and n for n in v)
            for k, v in document.items()):
        raise ValueError('expected JSON like {"stream": ["query_name", "pack_x_*"]}')
    return tuple((stream, tuple(names)) for stream, names in document.items())


def _parse_compression(text: str) -> str:
    value = text.strip().lower()
    if value in ("", "none"):
        return ""
    if value != "gzip":
        raise ValueError("expected gzip or none")
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One option: its osquery name, default (as osquery writes it) and parser."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    #: True for options osquery itself defines; False for this extension's own additions.
    osquery: bool = True
    #: A secret: never shown in a log line, an error, a settings dump or a process listing.
    secret: bool = False

    @property
    def boolean(self) -> bool:
        """A true/false option: a bare --flag on the command line means true."""
        return self.parse is _parse_bool



_SPEC: Final = "option"


def option(default: str, parse: Callable[[str], Any], help: str, *, osquery: bool = True,
           secret: bool = False) -> Any:
    """One option, declared on its Settings field (whose name is osquery's): the default as
    osquery writes it, the parser that types and checks a value, and the help line."""
    return dataclasses.field(default=parse(default), repr=not secret,
                             metadata={_SPEC: (default, parse, help, osquery, secret)})


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """What one service's options say, under names common to Kinesis and Firehose."""

    service: str
    stream: str
    period: int
    endpoint: str
    region: str
    routes: Routes
    status_stream: str
    forwards_status: bool
    #: KPL aggregation (aws_kinesis_aggregate) or newline packing (aws_firehose_pack).
    many_rows_per_record: bool
    compression: str
    random_partition_key: bool
    #: The stream's MaxRecordSizeInKiB (Kinesis); 0 for a service whose limit is fixed.
    max_record_kib: int = 0
    #: The options these came from, for messages that name them.
    stream_option: str = ""
    region_option: str = ""
    endpoint_option: str = ""

    def route(self, status: bool, query: str) -> str:
        """The stream a row goes to: a route naming its query (or a pack prefix ending in *),
        the status stream for status logs, else the plugin's stream."""
        if status:
            return self.status_stream or self.stream
        for stream, names in self.routes:
            for pattern in names:
                if query == pattern or (pattern.endswith("*") and query.startswith(pattern[:-1])):
                    return stream
        return self.stream

    def single_destination(self) -> bool:
        """Whether every row goes to the plugin's own stream (no routes, no status stream)."""
        return not self.routes and self.status_stream in ("", self.stream)


@dataclass(frozen=True)
class Settings:
    """Everything the extension reads from osquery's options, parsed and validated: one field
    per option, declared here once (name, type, default, parser, help); `OPTIONS`, the
    command-line flags, `check` and the README's table all come from these fields."""

    aws_kinesis_stream: str = option("", _parse_str, "Kinesis Data Streams stream name")
    aws_kinesis_period: int = option("10", _parse_period, "Seconds between Kinesis flushes (1-86400)")
    aws_kinesis_random_partition_key: bool = option("false", _parse_bool,
        "Use a random partition key per record instead of the host identifier")
    aws_kinesis_disable_log_status: bool = option("false", _parse_bool, "Do not send status logs to Kinesis")
    aws_kinesis_endpoint: str = option("", _parse_endpoint, "Custom Kinesis endpoint URL")
    aws_kinesis_region: str = option("", _parse_region,
        "Kinesis region, like us-east-1 (overrides aws_region)")
    aws_firehose_stream: str = option("", _parse_str, "Firehose delivery stream name")
    aws_firehose_period: int = option("10", _parse_period, "Seconds between Firehose flushes (1-86400)")
    aws_firehose_endpoint: str = option("", _parse_endpoint, "Custom Firehose endpoint URL")
    aws_firehose_region: str = option("", _parse_region, "Firehose region (overrides aws_region)")
    aws_access_key_id: str = option("", _parse_str, "AWS access key ID override")
    aws_secret_access_key: str = option("", _parse_str, "AWS secret access key override", secret=True)
    aws_session_token: str = option("", _parse_str, "AWS session token override", secret=True)
    aws_profile_name: str = option("", _parse_str, "AWS config profile for credentials and region")
    aws_region: str = option("", _parse_region, "AWS region override")
    aws_sts_arn_role: str = option("", _parse_str, "AWS STS assume role ARN")
    aws_sts_region: str = option("", _parse_region, "AWS STS assume role region")
    aws_sts_session_name: str = option("default", _parse_str, "AWS STS session name")
    aws_sts_timeout: int = option("3600", _parse_sts_timeout,
        "AWS STS temporary credential lifetime in seconds (900-3600)")
    aws_enable_proxy: bool = option("false", _parse_bool, "Send AWS calls through a proxy")
    aws_proxy_scheme: str = option("https", _parse_scheme, "Proxy scheme (http or https)")
    aws_proxy_host: str = option("", _parse_str, "Proxy host")
    aws_proxy_port: int | None = option("", _parse_port, "Proxy port")
    aws_proxy_username: str = option("", _parse_str, "Proxy username")
    aws_proxy_password: str = option("", _parse_str, "Proxy password", secret=True)
    buffered_log_max: int = option("1000000", _parse_buffered_log_max,
        "Most records kept waiting per plugin (at most 10^9); past it the oldest are dropped")
    aws_enforce_fips: bool = option("false", _parse_bool,
        "Use only FIPS endpoints for Kinesis, Firehose and STS; refuse regions without one "
        "and custom endpoints")
    aws_disable_imdsv1_fallback: bool = option("false", _parse_bool,
        "Never make an IMDSv1 request: without an IMDSv2 token, no instance metadata")
    aws_imdsv2_request_attempts: int = option("3", _parse_imds_attempts, "Attempts at an IMDSv2 token (1-10)")
    aws_imdsv2_request_interval: int = option("3", _parse_imds_interval,
        "Seconds to wait after the first failed IMDSv2 token attempt, multiplied by itself "
        "after each further one (0-60)")
    aws_debug: bool = option("false", _parse_bool,
        "Log the AWS SDK's (botocore, urllib3) debug lines, secrets redacted")
    # The extension's own options. osqueryd does not define them, so in a config file they are
    # written with the custom_ prefix (custom_aws_logger_spool_dir); on the command line plain.
    aws_sts_endpoint: str = option("", _parse_endpoint,
        "Custom STS endpoint URL (non-AWS implementations, tests)", osquery=False)
    aws_logger_spool_dir: str = option("/var/osquery/aws_logger", _parse_spool_dir,
        "Directory of the durable spool (an absolute path)", osquery=False)
    aws_logger_spool_max_bytes: int = option(str(1 << 30), _parse_spool_bytes,
        "Most bytes kept waiting per plugin (at most 1 TiB); past it the oldest are dropped",
        osquery=False)
    aws_logger_shutdown_timeout: int = option("5", _parse_shutdown_timeout,
        "Seconds to keep flushing at shutdown before exiting (1-3600)", osquery=False)
    aws_logger_plugin_suffix: str = option("", _parse_suffix,
        "Register the plugins as aws_kinesis<suffix> and aws_firehose<suffix>", osquery=False)
    aws_kinesis_max_record_size_kib: int = option("1024", _parse_record_kib,
        "The streams' MaxRecordSizeInKiB (1024-10240): records up to this size are sent, "
        "larger ones dropped", osquery=False)
    aws_kinesis_aggregate: bool = option("false", _parse_bool,
        "Pack rows into KPL aggregated records (one partition key each)", osquery=False)
    aws_firehose_pack: bool = option("false", _parse_bool,
        "Pack several newline-terminated rows into each Firehose record", osquery=False)
    aws_firehose_compression: str = option("", _parse_compression,
        "gzip each packed Firehose record (plain S3 destinations only)", osquery=False)
    aws_kinesis_routes: Routes = option("", _parse_routes,
        'Send chosen queries to other streams: {"stream": ["query", "pack_x_*"]}', osquery=False)
    aws_firehose_routes: Routes = option("", _parse_routes,
        'Send chosen queries to other delivery streams: {"stream": ["query", ...]}', osquery=False)
    aws_kinesis_status_stream: str = option("", _parse_str,
        "Stream for status logs (default: aws_kinesis_stream)", osquery=False)
    aws_firehose_status_stream: str = option("", _parse_str,
        "Delivery stream for status logs (default: aws_firehose_stream)", osquery=False)
    aws_logger_results_as_events: bool = option("false", _parse_bool,
        "Expand batch-format result lines (--logger_event_type=false, snapshots) into "
        "one record per row, exactly as osqueryd's event format", osquery=False)
    aws_logger_record_ids: bool = option("false", _parse_bool,
        "Stamp each record with a stable log_id for consumers to drop duplicates", osquery=False)
    aws_logger_log_format: str = option("text", _parse_log_format,
        "Log lines as text or json (one object per line), each with an ISO-8601 UTC time", osquery=False)
    aws_logger_metrics_file: str = option("", _parse_metrics_file,
        "Write the status counters in Prometheus text format to this .prom file "
        "(an absolute path)", osquery=False)
    aws_logger_ca_bundle: str = option("", _parse_ca_bundle,
        "CA bundle file (an absolute path) for TLS to AWS (default: AWS_CA_BUNDLE, else the "
        "host's trust store)", osquery=False)

    def dump(self) -> dict[str, str]:
        """Every option as text, secrets redacted: safe to log or print."""
        out = {}
        for spec in OPTIONS:
            value = getattr(self, spec.name)
            if isinstance(value, tuple):
                text = json.dumps({stream: list(names) for stream, names in value}) if value else ""
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = "" if value is None else str(value)
            out[spec.name] = shown(spec.name, text)
        return out

    def proxy_problem(self) -> str | None:
        """Why no AWS call can go out with these settings' proxy, if none can."""
        if self.aws_enable_proxy and (not self.aws_proxy_host or self.aws_proxy_port is None):
            return "aws_enable_proxy=true needs aws_proxy_host and aws_proxy_port"
        return None


OPTIONS: Final[tuple[OptionSpec, ...]] = tuple(
    OptionSpec(f.name, *f.metadata[_SPEC]) for f in dataclasses.fields(Settings))
OPTION_NAMES: Final = frozenset(spec.name for spec in OPTIONS)
#: Options whose values never appear in a log line, an error or a settings dump.
SECRET_OPTIONS: Final = frozenset(spec.name for spec in OPTIONS if spec.secret)


def shown(name: str, value: str) -> str:
    """The value of option `name` as it may be shown to a person (a secret's as the mask)."""
    return MASK if name in SECRET_OPTIONS and value else value


def option_default(name: str) -> Any:
    """The parsed default of option `name`, from the table."""
    return _SPECS[name].parse(_SPECS[name].default)


_SPECS: Final = {spec.name: spec for spec in OPTIONS}


def option_value(options: Mapping[str, str], name: str) -> str | None:
    """The value osqueryd holds for `name`: its custom_ form wins over the core flag.

    The custom_ form is only ever set on purpose for this extension, whereas a stock osqueryd
    reports every core aws_* flag, at its default when nobody set it.
    """
    custom = options.get(CUSTOM_PREFIX + name)
    if custom is not None and custom != "":
        return custom
    return options.get(name)


def unknown_options(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """The aws_* and custom_aws_* names among `names` that nothing reads, each with the closest
    option this extension knows under the same spelling (plain or custom_), or None.

    osquery's own aws_* flags are known even when this extension does not read them: a stock
    osqueryd reports each one it defines. A custom_ name is known only for an option of the
    table, since osqueryd keeps custom_ options for extensions and reads none itself.
    """
    found: list[tuple[str, str | None]] = []
    known = sorted(name[len("aws_"):] for name in OPTION_NAMES if name.startswith("aws_"))
    for name in sorted(set(names)):
        custom = name.startswith(CUSTOM_PREFIX)
        plain = name.removeprefix(CUSTOM_PREFIX)
        if not plain.startswith("aws_") or plain in OPTION_NAMES:
            continue  # not ours to judge, or read in either spelling
        if plain in OSQUERY_AWS_FLAGS_NOT_READ:
            if custom:  # osquery reads its own flags only under their plain names
                found.append((name, plain))
            continue
        # Compared without the shared "aws_", which would make every name look close.
        close = difflib.get_close_matches(plain[len("aws_"):], known, n=1)
        prefix = (CUSTOM_PREFIX if custom else "") + "aws_"
        found.append((name, prefix + close[0] if close else None))
    return found


def describe_unknown(unknown: list[tuple[str, str | None]]) -> str:
    """One line naming the unknown options and the closest known ones; never their values,
    which may be secrets under a misspelt name that the redaction does not know."""
    return "; ".join(name + (f" (did you mean {close}?)" if close else "")
                     for name, close in unknown)


def parse_settings(options: Mapping[str, str],
                   command_line: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """Settings from osqueryd's options and the extension's own command line (which wins).

    Answers the settings and one problem per unusable option, naming the option and its value
    (secrets redacted); an unusable option keeps its default in the settings answered.
    """
    values: dict[str, Any] = {}
    problems = []
    for spec in OPTIONS:
        text = command_line.get(spec.name)
        if text is None:
            text = option_value(options, spec.name)
        if text is None:
            text = spec.default
        try:
            values[spec.name] = spec.parse(text)
        except ValueError as exc:
            # int() messages quote the value itself; never let one through for a secret.
            reason = str(exc) if not str(exc).startswith("invalid literal") else "expected a number"
            quoted = shown(spec.name, text)
            if len(quoted) > SHOWN_VALUE_CHARS:  # a pasted blob or a runaway number: its start will do
                quoted = quoted[:SHOWN_VALUE_CHARS] + "..."
            problems.append(f"{spec.name}={quoted!r}: {reason}")
    return Settings(**values), problems


def build_settings(options: Mapping[str, str], command_line: Mapping[str, str]) -> Settings:
    """Like parse_settings, but raises SettingsError when any option is unusable."""
    settings, problems = parse_settings(options, command_line)
    if problems:
        raise SettingsError(problems)
    return settings
