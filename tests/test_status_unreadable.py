"""`osquery-aws-logger status` on a spool it cannot read (issue 18, item 8's operator side): a
spool owned by another user, mode 0700, read by root without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (as hardened units run). It names the reason and exits non-zero; nothing
raises, in `read_status` and `spool_problem` either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from osquery_aws_logger.counters import PluginCounters
from osquery_aws_logger.spool.spool import KIND_RESULT, Spool
from tests.harness import EXTENSION_COMMAND
from tests.test_every_row import NO_DAC

FOREIGN_UID = 65534


def without_dac(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NO_DAC, *command], capture_output=True, text=True, timeout=60,
                          check=False)


def status(spool: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return without_dac(str(EXTENSION_COMMAND), "status", "--aws_logger_spool_dir", str(spool),
                       *more)


def foreign(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, FOREIGN_UID, FOREIGN_UID)
    return path


def test_a_spool_owned_by_another_user_is_named_with_the_reason(tmp_path: Path) -> None:
    spool = foreign(tmp_path / "spool")
    (spool / "kinesis").mkdir()  # made with our caps; unreadable to the command without them
    text = status(spool)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "Traceback" not in text.stderr, text.stderr
    assert text.stdout.strip() == (f"spool {spool}: {spool} is owned by uid {FOREIGN_UID}, "
                                   f"not root or this process's user")
    rows = status(spool, "--json")
    assert rows.returncode == 1 and "Traceback" not in rows.stderr, rows.stderr
    assert json.loads(rows.stdout) == []
    assert f"owned by uid {FOREIGN_UID}" in rows.stderr


def test_a_spool_that_cannot_be_listed_says_so(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "kinesis").mkdir()
    spool.chmod(0)  # ours, but no permission at all: only CAP_DAC_OVERRIDE would read it
    text = status(spool)
    assert text.returncode == 1 and "Traceback" not in text.stderr, text.stderr
    assert text.stdout.strip() == f"spool {spool}: cannot read {spool}: Permission denied"


def test_a_plugin_directory_that_cannot_be_read_is_an_unhealthy_row_beside_the_others(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    counters = PluginCounters()
    firehose = Spool(spool / "firehose", max_records=10, max_bytes=1 << 20, on_drop=counters.drop)
    firehose.append(KIND_RESULT, b'{"a":1}')
    firehose.close()
    foreign(spool / "kinesis")
    text = status(spool, "--json")
    assert text.returncode == 1 and "Traceback" not in text.stderr, text.stderr
    rows = {row["service"]: row for row in json.loads(text.stdout)}
    assert rows["kinesis"]["healthy"] is False and rows["kinesis"]["state"] == "unknown"
    assert rows["kinesis"]["last_error"] == f"cannot read {spool / 'kinesis'}: Permission denied"
    assert rows["firehose"]["spool_records"] == 1 and rows["firehose"]["last_error"] == ""
    table = status(spool)
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert f"cannot read {spool / 'kinesis'}: Permission denied" in table.stdout


def test_read_status_and_spool_problem_never_raise_on_a_foreign_spool(tmp_path: Path) -> None:
    spool = foreign(tmp_path / "spool")
    (spool / "kinesis").mkdir()
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from osquery_aws_logger.files import spool_problem\n"
            "from osquery_aws_logger.ops.status import read_status\n"
            "root = Path(sys.argv[1])\n"
            "print(read_status(root), spool_problem(root), sep='\\n')\n")
    result = without_dac(sys.executable, "-c", code, str(spool))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]", f"{spool} is owned by uid {FOREIGN_UID}, not root or this process's user"]
