"""The client side of osqueryd's ExtensionManager: ping, options, register, deregister."""

from __future__ import annotations

import time
from typing import Any, Final

from osquery.extensions import ExtensionManager
from osquery.extensions.ttypes import InternalExtensionInfo
from thrift.transport import TSocket, TTransport

from . import __version__
from ._errors import RegistrationError
from ._status import TABLE_NAME, StatusTable
from ._wire import lenient_protocol

EXTENSION_NAME: Final = "aws_logger"
SDK_VERSION: Final = "5.23.0"
MIN_SDK_VERSION: Final = "1.8.0"
CONFLICT_TEXT: Final = "conflicts with another item of the same name"


class ManagerClient:
    """Calls into osqueryd's ExtensionManager, each on a connection of its own."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _call(self, method: str, *args: Any) -> Any:
        sock = TSocket.TSocket(unix_socket=self.socket_path)
        sock.setTimeout(self.timeout * 1000)
        transport = TTransport.TBufferedTransport(sock)
        transport.open()
        try:
            client = ExtensionManager.Client(lenient_protocol(transport))
            return getattr(client, method)(*args)
        finally:
            transport.close()

    def wait_until_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("ping")
                return True
            except (TTransport.TTransportException, OSError):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)

    def options(self) -> dict[str, str]:
        return {name: info.value or "" for name, info in self._call("options").items()}

    def osquery_version(self) -> str:
        answer = self._call("query", "SELECT version FROM osquery_info")
        if answer.status.code == 0 and answer.response:
            return str(answer.response[0].get("version", ""))
        return ""

    def register(self, names: list[str]) -> int:
        info = InternalExtensionInfo(name=EXTENSION_NAME, version=__version__,
                                     sdk_version=SDK_VERSION, min_sdk_version=MIN_SDK_VERSION)
        registry: dict[str, dict[str, list[Any]]] = {
            "logger": {name: [] for name in names},
            "table": {TABLE_NAME: StatusTable.routes()},
        }
        status = self._call("registerExtension", info, registry)
        if status.code != 0:
            raise RegistrationError(status.message or "refused",
                                    name_clash=CONFLICT_TEXT in (status.message or ""))
        return int(status.uuid)

    def registered(self, uuid: int) -> bool:
        return uuid in self._call("extensions")

    def ping_ok(self) -> bool:
        return bool(self._call("ping").code == 0)

    def deregister(self, uuid: int) -> None:
        self._call("deregisterExtension", uuid)
