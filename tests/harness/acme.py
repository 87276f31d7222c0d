"""Let's Encrypt's test CA on this machine: Debian's pebble and its DNS server.

pebble-challtestsrv answers 127.0.0.1 for every name, so pebble validates each HTTP-01
challenge by a GET to http://<name>:<http_port>/.well-known/acme-challenge/<token>: a
real request to the nginx that serves certbot's webroot on that port. Nothing is marked
valid without it (no PEBBLE_VA_ALWAYS_VALID).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from opskit import tls
from tests.harness.core import Service, free_port, port_open, require_binary, wait_until

NINETY_DAYS = 90 * 86400  # Let's Encrypt's certificate lifetime


@dataclass
class ChallengeDNS:
    """pebble-challtestsrv as a DNS server only: every A query is answered 127.0.0.1."""

    port: int
    root: Path
    service: Service | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ChallengeDNS:
        management = free_port()
        argv = [
            require_binary("pebble-challtestsrv", "packages"),
            "-dns01", self.address,
            "-defaultIPv4", "127.0.0.1",
            # no AAAA answers: nginx listens on 127.0.0.1 only
            "-defaultIPv6", "",
            # its own challenge servers stay off: nginx answers the challenges
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{management}",
        ]  # fmt: skip
        self.service = Service(argv, log=self.root / "challtestsrv.log").start()
        wait_until(
            lambda: (
                not self.service.running
                or (port_open("127.0.0.1", self.port) and port_open("127.0.0.1", management))
            ),
            timeout=30,
            what=f"pebble-challtestsrv DNS on {self.address}",
        )
        self.service.check_alive()
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(sig=signal.SIGTERM, timeout=10)


@dataclass
class Pebble:
    """One pebble ACME server; its state (accounts, CA keys) lives as long as the process."""

    root: Path
    http_port: int  # where pebble's VA sends HTTP-01 requests: nginx's plain HTTP port
    dns: ChallengeDNS
    validity_s: int = NINETY_DAYS
    # the ACME listener's address: loopback, or a Docker network's gateway on this machine
    # when certbot runs in a container (the management listener stays on loopback)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{self.host}:{self.port}/dir"

    @property
    def listener_ca(self) -> Path:
        """The CA of pebble's own HTTPS listener: certbot trusts it via REQUESTS_CA_BUNDLE."""
        return self.root / "listener-ca.pem"

    def start(self) -> Pebble:
        self.root.mkdir(parents=True, exist_ok=True)
        ca = tls.create_ca("pebble listener test CA")
        tls.write_public(self.listener_ca, ca.cert_pem())
        tls.issue_leaf(ca, sorted({self.host, "127.0.0.1", "localhost"})).write(
            self.root / "listener.pem", self.root / "listener-key.pem"
        )
        config = {
            "pebble": {
                "listenAddress": f"{self.host}:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.root / "listener.pem"),
                "privateKey": str(self.root / "listener-key.pem"),
                "httpPort": self.http_port,
                # unused (certbot's webroot answers HTTP-01), but pebble wants a port
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": self.validity_s,
            }
        }
        (self.root / "pebble.json").write_text(json.dumps(config, indent=2))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # validate at once (pebble otherwise waits 0-15 s before each attempt)
            "PEBBLE_VA_NOSLEEP": "1",
            # never reject a good nonce (pebble rejects 5 % by default to test retries)
            "PEBBLE_WFE_NONCEREJECT": "0",
            # reuse a valid authorization as rarely as pebble allows. 0 is not never: pebble
            # makes a new authorization only when a draw of 0-99 exceeds this percentage,
            # so it still reuses one name in a hundred (AcmeAccount below for the rest)
            "PEBBLE_AUTHZREUSE": "0",
        }
        argv = [
            require_binary("pebble", "packages"),
            "-config", str(self.root / "pebble.json"),
            "-dnsserver", self.dns.address,
        ]  # fmt: skip
        self.service = Service(argv, log=self.root / "pebble.log", env=env, cwd=self.root)
        self.service.start()
        wait_until(
            lambda: not self.service.running or self._get("/dir", self.port, self.host),
            timeout=60,
            what=f"pebble's ACME directory {self.directory_url} (log: {self.root}/pebble.log)",
        )
        self.service.check_alive()
        return self

    def _get(self, path: str, port: int, host: str = "127.0.0.1") -> bytes:
        context = ssl.create_default_context(cafile=str(self.listener_ca))
        url = f"https://{host}:{port}{path}"
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:  # noqa: S310
            return resp.read()

    def roots(self) -> str:
        """The root of the chains pebble issues (new at every start of pebble)."""
        return self._get("/roots/0", self.management_port).decode()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(sig=signal.SIGTERM, timeout=10)
