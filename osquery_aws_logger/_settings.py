"""One typed, validated settings object built from osquery's options under osquery's own names.

`OPTIONS` is the one table of options: name, default, parser (type and validation) and help.
`Settings` declares the same fields so mypy can type them; at import the two are compared
(names, order and defaults) and a mismatch fails at once. The command-line flags, `check` and
the README's table are derived from or tested against `OPTIONS`. Per-service options are read
through a typed view (`Settings.service("kinesis")`), never through built attribute names.
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

from ._errors import SettingsError

#: Options whose values never appear in a log line, an error or a settings dump.
SECRET_OPTIONS: Final = frozenset({"aws_secret_access_key", "aws_session_token", "aws_proxy_password"})
REDACTED: Final = "<redacted>"
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
#: 5.x). A stock osqueryd reports every flag it defines, so these are known, not typos.
OSQUERY_AWS_FLAGS_NOT_READ: Final = frozenset({
    "aws_debug", "aws_disable_imdsv1_fallback", "aws_enforce_fips",
    "aws_imdsv2_request_attempts", "aws_imdsv2_request_interval"})

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

    @property
    def boolean(self) -> bool:
        """A true/false option: a bare --flag on the command line means true."""
        return self.parse is _parse_bool


OPTIONS: Final[tuple[OptionSpec, ...]] = (
    OptionSpec("aws_kinesis_stream", "", _parse_str, "Kinesis Data Streams stream name"),
    OptionSpec("aws_kinesis_period", "10", _parse_period,
               "Seconds between Kinesis flushes (1-86400)"),
    OptionSpec("aws_kinesis_random_partition_key", "false", _parse_bool,
               "Use a random partition key per record instead of the host identifier"),
    OptionSpec("aws_kinesis_disable_log_status", "false", _parse_bool,
               "Do not send status logs to Kinesis"),
    OptionSpec("aws_kinesis_endpoint", "", _parse_endpoint, "Custom Kinesis endpoint URL"),
    OptionSpec("aws_kinesis_region", "", _parse_region,
               "Kinesis region, like us-east-1 (overrides aws_region)"),
    OptionSpec("aws_firehose_stream", "", _parse_str, "Firehose delivery stream name"),
    OptionSpec("aws_firehose_period", "10", _parse_period,
               "Seconds between Firehose flushes (1-86400)"),
    OptionSpec("aws_firehose_endpoint", "", _parse_endpoint, "Custom Firehose endpoint URL"),
    OptionSpec("aws_firehose_region", "", _parse_region, "Firehose region (overrides aws_region)"),
    OptionSpec("aws_access_key_id", "", _parse_str, "AWS access key ID override"),
    OptionSpec("aws_secret_access_key", "", _parse_str, "AWS secret access key override"),
    OptionSpec("aws_session_token", "", _parse_str, "AWS session token override"),
    OptionSpec("aws_profile_name", "", _parse_str, "AWS config profile for credentials and region"),
    OptionSpec("aws_region", "", _parse_region, "AWS region override"),
    OptionSpec("aws_sts_arn_role", "", _parse_str, "AWS STS assume role ARN"),
    OptionSpec("aws_sts_region", "", _parse_region, "AWS STS assume role region"),
    OptionSpec("aws_sts_session_name", "default", _parse_str, "AWS STS session name"),
    OptionSpec("aws_sts_timeout", "3600", _parse_sts_timeout,
               "AWS STS temporary credential lifetime in seconds (900-3600)"),
    OptionSpec("aws_enable_proxy", "false", _parse_bool, "Send AWS calls through a proxy"),
    OptionSpec("aws_proxy_scheme", "https", _parse_scheme, "Proxy scheme (http or https)"),
    OptionSpec("aws_proxy_host", "", _parse_str, "Proxy host"),
    OptionSpec("aws_proxy_port", "", _parse_port, "Proxy port"),
    OptionSpec("aws_proxy_username", "", _parse_str, "Proxy username"),
    OptionSpec("aws_proxy_password", "", _parse_str, "Proxy password"),
    OptionSpec("buffered_log_max", "1000000", _parse_buffered_log_max,
               "Most records kept waiting per plugin (at most 10^9); past it the oldest are dropped"),
    # The extension's own options. osqueryd does not define them, so in a config file they are
    # written with the custom_ prefix (custom_aws_logger_spool_dir); on the command line plain.
    OptionSpec("aws_sts_endpoint", "", _parse_endpoint,
               "Custom STS endpoint URL (non-AWS implementations, tests)", osquery=False),
    OptionSpec("aws_logger_spool_dir", "/var/osquery/aws_logger", _parse_spool_dir,
               "Directory of the durable spool (an absolute path)", osquery=False),
    OptionSpec("aws_logger_spool_max_bytes", str(1 << 30), _parse_spool_bytes,
               "Most bytes kept waiting per plugin (at most 1 TiB); past it the oldest are dropped",
               osquery=False),
    OptionSpec("aws_logger_shutdown_timeout", "5", _parse_shutdown_timeout,
               "Seconds to keep flushing at shutdown before exiting (1-3600)", osquery=False),
    OptionSpec("aws_logger_plugin_suffix", "", _parse_suffix,
               "Register the plugins as aws_kinesis<suffix> and aws_firehose<suffix>",
               osquery=False),
    OptionSpec("aws_kinesis_aggregate", "false", _parse_bool,
               "Pack rows into KPL aggregated records (one partition key each)", osquery=False),
    OptionSpec("aws_firehose_pack", "false", _parse_bool,
               "Pack several newline-terminated rows into each Firehose record", osquery=False),
    OptionSpec("aws_firehose_compression", "", _parse_compression,
               "gzip each packed Firehose record (plain S3 destinations only)", osquery=False),
    OptionSpec("aws_kinesis_routes", "", _parse_routes,
               'Send chosen queries to other streams: {"stream": ["query", "pack_x_*"]}',
               osquery=False),
    OptionSpec("aws_firehose_routes", "", _parse_routes,
               'Send chosen queries to other delivery streams: {"stream": ["query", ...]}',
               osquery=False),
    OptionSpec("aws_kinesis_status_stream", "", _parse_str,
               "Stream for status logs (default: aws_kinesis_stream)", osquery=False),
    OptionSpec("aws_firehose_status_stream", "", _parse_str,
               "Delivery stream for status logs (default: aws_firehose_stream)", osquery=False),
    OptionSpec("aws_logger_results_as_events", "false", _parse_bool,
               "Expand batch-format result lines (--logger_event_type=false, snapshots) into "
               "one record per row, exactly as osqueryd's event format", osquery=False),
    OptionSpec("aws_logger_record_ids", "false", _parse_bool,
               "Stamp each record with a stable log_id for consumers to drop duplicates",
               osquery=False),
    OptionSpec("aws_logger_log_format", "text", _parse_log_format,
               "Log lines as text or json (one object per line), each with an ISO-8601 UTC time",
               osquery=False),
    OptionSpec("aws_logger_metrics_file", "", _parse_metrics_file,
               "Write the status counters in Prometheus text format to this .prom file "
               "(an absolute path)",
               osquery=False),
    OptionSpec("aws_logger_ca_bundle", "", _parse_ca_bundle,
               "CA bundle file (an absolute path) for TLS to AWS (default: AWS_CA_BUNDLE, else the "
               "host's trust store)",
               osquery=False),
)

OPTION_NAMES: Final = frozenset(spec.name for spec in OPTIONS)


def redact(name: str, value: str) -> str:
    """The value of option `name` as it may be shown to a person."""
    return REDACTED if name in SECRET_OPTIONS and value else value


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
    """Everything the extension reads from osquery's options, parsed and validated."""

    aws_kinesis_stream: str = ""
    aws_kinesis_period: int = 10
    aws_kinesis_random_partition_key: bool = False
    aws_kinesis_disable_log_status: bool = False
    aws_kinesis_endpoint: str = ""
    aws_kinesis_region: str = ""
    aws_firehose_stream: str = ""
    aws_firehose_period: int = 10
    aws_firehose_endpoint: str = ""
    aws_firehose_region: str = ""
    aws_access_key_id: str = ""
    aws_secret_access_key: str = dataclasses.field(default="", repr=False)
    aws_session_token: str = dataclasses.field(default="", repr=False)
    aws_profile_name: str = ""
    aws_region: str = ""
    aws_sts_arn_role: str = ""
    aws_sts_region: str = ""
    aws_sts_session_name: str = "default"
    aws_sts_timeout: int = 3600
    aws_enable_proxy: bool = False
    aws_proxy_scheme: str = "https"
    aws_proxy_host: str = ""
    aws_proxy_port: int | None = None
    aws_proxy_username: str = ""
    aws_proxy_password: str = dataclasses.field(default="", repr=False)
    buffered_log_max: int = 1_000_000
    aws_sts_endpoint: str = ""
    aws_logger_spool_dir: str = "/var/osquery/aws_logger"
    aws_logger_spool_max_bytes: int = 1 << 30
    aws_logger_shutdown_timeout: int = 5
    aws_logger_plugin_suffix: str = ""
    aws_kinesis_aggregate: bool = False
    aws_firehose_pack: bool = False
    aws_firehose_compression: str = ""
    aws_kinesis_routes: Routes = ()
    aws_firehose_routes: Routes = ()
    aws_kinesis_status_stream: str = ""
    aws_firehose_status_stream: str = ""
    aws_logger_results_as_events: bool = False
    aws_logger_record_ids: bool = False
    aws_logger_log_format: str = "text"
    aws_logger_metrics_file: str = ""
    aws_logger_ca_bundle: str = ""

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
            out[spec.name] = redact(spec.name, text)
        return out

    @property
    def kinesis(self) -> ServiceSettings:
        return ServiceSettings(
            service="kinesis", stream=self.aws_kinesis_stream, period=self.aws_kinesis_period,
            endpoint=self.aws_kinesis_endpoint, region=self.aws_kinesis_region,
            routes=self.aws_kinesis_routes, status_stream=self.aws_kinesis_status_stream,
            forwards_status=not self.aws_kinesis_disable_log_status,
            many_rows_per_record=self.aws_kinesis_aggregate, compression="",
            random_partition_key=self.aws_kinesis_random_partition_key)

    @property
    def firehose(self) -> ServiceSettings:
        return ServiceSettings(
            service="firehose", stream=self.aws_firehose_stream, period=self.aws_firehose_period,
            endpoint=self.aws_firehose_endpoint, region=self.aws_firehose_region,
            routes=self.aws_firehose_routes, status_stream=self.aws_firehose_status_stream,
            forwards_status=True, many_rows_per_record=self.aws_firehose_pack,
            compression=self.aws_firehose_compression, random_partition_key=False)

    def service(self, name: str) -> ServiceSettings:
        """The typed view of one service's options ("kinesis" or "firehose")."""
        if name == "kinesis":
            return self.kinesis
        if name == "firehose":
            return self.firehose
        raise KeyError(name)

    def stream_problem(self, service: str) -> str | None:
        """Why `service` ("kinesis" or "firehose") cannot ship with these settings, if it can't."""
        if not self.service(service).stream:
            option = f"aws_{service}_stream"
            return f"{option} is empty: set it to the {service} stream to deliver to"
        if self.aws_enable_proxy and (not self.aws_proxy_host or self.aws_proxy_port is None):
            return "aws_enable_proxy=true needs aws_proxy_host and aws_proxy_port"
        return None


def option_default(name: str) -> Any:
    """The parsed default of option `name`, from the table."""
    return _SPECS[name].parse(_SPECS[name].default)


_SPECS: Final = {spec.name: spec for spec in OPTIONS}


def _check_settings_against_options() -> None:
    """Settings must declare exactly the table's options, in order, with the table's defaults."""
    fields = dataclasses.fields(Settings)
    names = [f.name for f in fields]
    if names != [spec.name for spec in OPTIONS]:
        raise RuntimeError(f"Settings fields differ from OPTIONS: {names}")
    for f in fields:
        if f.default != option_default(f.name):
            raise RuntimeError(f"Settings.{f.name} defaults to {f.default!r}, OPTIONS says "
                               f"{_SPECS[f.name].default!r}")


_check_settings_against_options()


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
            shown = redact(spec.name, text)
            if len(shown) > SHOWN_VALUE_CHARS:  # a pasted blob or a runaway number: its start will do
                shown = shown[:SHOWN_VALUE_CHARS] + "..."
            problems.append(f"{spec.name}={shown!r}: {reason}")
    return Settings(**values), problems


def build_settings(options: Mapping[str, str], command_line: Mapping[str, str]) -> Settings:
    """Like parse_settings, but raises SettingsError when any option is unusable."""
    settings, problems = parse_settings(options, command_line)
    if problems:
        raise SettingsError(problems)
    return settings
