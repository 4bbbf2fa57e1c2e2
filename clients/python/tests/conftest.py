"""A real approvals service for the tests: its own redis-server and `approvals serve` on free
ports, tokens minted with `approvals token new --json`. No mocks.

`APV_BIN` names the service binary (the Rust test `tests/python_client.rs` passes the one it
built; a relative path may be relative to the repository's root); `redis-server` must be on the PATH. Each test takes a tenant of its
own from a pool the service was configured with, so tests do not see each other's approvals.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from approvals_client import ApprovalsClient, AsyncApprovalsClient, RetryPolicy

REPO = Path(__file__).resolve().parents[3]
POOL = 60
EXPIRY_TENANT_TTL = "2s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def approvals_bin() -> str:
    """`APV_BIN` as an absolute path: a relative one is taken from the current directory when
    it names a file there, else from the repository's root (`target/debug/approvals` works
    from `clients/python` too). The service and `token new` run in other directories."""
    path = os.environ.get("APV_BIN")
    if not path:
        pytest.exit(
            "APV_BIN is not set: run these tests through `cargo test --test python_client` "
            "(scripts/test.sh), or set it to a built `approvals` binary",
            returncode=2,
        )
    for candidate in (Path(path).absolute(), REPO / path):
        if candidate.is_file():
            return str(candidate)
    pytest.exit(f"APV_BIN={path} names no file (here or under {REPO})", returncode=2)


class Redis:
    """A redis-server child without persistence: a restart on the same port starts empty."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.exit("redis-server is not on the PATH (scripts/test.sh installs it)", returncode=2)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} (port {self.port} taken?)")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """Stops answering, keeping its data (SIGSTOP): the service's calls time out (`503`)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass(frozen=True)
class Tenant:
    name: str
    agent_token: str
    reviewer_token: str


@dataclass
class Service:
    """`approvals serve` on a free port with its own Redis; `tenants` hold minted tokens."""

    base_url: str
    redis: Redis
    process: subprocess.Popen[bytes]
    tenants: list[Tenant]
    log: Path

    def wait_ready(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"approvals exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"approvals not ready within {seconds} s:\n{self.log.read_text()[-4000:]}")

    def stop_process(self) -> None:
        """Stops `approvals serve` (Redis, and its data, stay)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_process(self) -> None:
        """Starts `approvals serve` again, on the same port with the same configuration."""
        directory = self.log.parent
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [approvals_bin(), "serve", "--config", str(directory / "approvals.toml")],
                stdout=sink, stderr=subprocess.STDOUT, cwd=directory, env=service_env(),
            )
        self.wait_ready()

    def stop(self) -> None:
        self.stop_process()
        self.redis.stop()


def service_env() -> dict[str, str]:
    """The environment without `APPROVALS_…` variables: the service reads those as its
    configuration and refuses to start on one that names no key."""
    return {k: v for k, v in os.environ.items() if not k.startswith("APPROVALS_")}


def mint(binary: str, tenant: str, role: str, subject: str) -> dict[str, str]:
    out = subprocess.run(
        [binary, "token", "new", "--tenant", tenant, "--role", role, "--subject", subject, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=service_env(),
    )
    return dict(json.loads(out.stdout))


def start_service(
    directory: Path, tenant_names: list[str], tenant_ttl: dict[str, str] | None = None, limits: dict[str, int] | None = None
) -> Service:
    binary = approvals_bin()
    redis = Redis(directory)
    redis.start()
    port = free_port()
    entries: list[dict[str, str]] = []
    tenants: list[Tenant] = []
    for name in tenant_names:
        agent = mint(binary, name, "agent", f"{name}-agent")
        reviewer = mint(binary, name, "reviewer", f"{name}-reviewer")
        entries += [agent, reviewer]
        tenants.append(Tenant(name, agent["token"], reviewer["token"]))
    lines = [
        "[server]", f'listen = "127.0.0.1:{port}"', "",
        "[redis]", f'url = "{redis.url}"', 'call_timeout = "1s"', "",
        "[policy]", f"dir = {json.dumps(str(REPO / 'policies'))}", "",
        "[approvals]", 'sweep_interval = "100ms"', 'events_poll_interval = "100ms"', "",
        "[limits]",
    ]
    lines += [f"{key} = {value}" for key, value in (limits or {}).items()]
    lines += ["", "[approvals.tenant_ttl]"]
    lines += [f'{json.dumps(t)} = "{ttl}"' for t, ttl in (tenant_ttl or {}).items()]
    for e in entries:
        lines += ["", "[[auth.tokens]]"] + [f"{k} = {json.dumps(e[k])}" for k in ("subject", "tenant", "role", "sha256")]
    config = directory / "approvals.toml"
    config.write_text("\n".join(lines) + "\n")
    log = directory / "approvals.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([binary, "serve", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT, cwd=directory, env=service_env())
    service = Service(f"http://127.0.0.1:{port}", redis, process, tenants, log)
    try:
        service.wait_ready()
    except Exception:
        service.stop()
        raise
    return service


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    with tempfile.TemporaryDirectory(prefix="approvals-py-") as directory:
        names = [f"py{n:02d}" for n in range(POOL)]
        svc = start_service(Path(directory), names, {name: EXPIRY_TENANT_TTL for name in names[-4:]})
        svc.expiring = svc.tenants[-4:]  # type: ignore[attr-defined]
        svc.pool = itertools.chain(svc.tenants[:-4])  # type: ignore[attr-defined]
        try:
            yield svc
        finally:
            svc.stop()


@pytest.fixture
def own_service(tmp_path: Path) -> Iterator[Service]:
    """A service with a Redis of its own, for the tests that stop (or freeze) one or the other."""
    service = start_service(tmp_path, ["outage"])
    try:
        yield service
    finally:
        if service.redis.process is not None:
            service.redis.thaw()
        service.stop()


@pytest.fixture
def tenant(service: Service) -> Tenant:
    """A tenant no other test uses (default TTL)."""
    try:
        return next(service.pool)  # type: ignore[attr-defined]
    except StopIteration:
        pytest.fail("the tenant pool is exhausted: raise POOL in conftest.py")


@pytest.fixture
def expiring_tenant(service: Service) -> Tenant:
    """A tenant whose approvals expire after EXPIRY_TENANT_TTL."""
    return service.expiring.pop()  # type: ignore[attr-defined]


FAST_RETRY = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.5, max_elapsed=30)


@pytest.fixture
def agent(service: Service, tenant: Tenant) -> Iterator[ApprovalsClient]:
    with ApprovalsClient(service.base_url, tenant.agent_token, tenant.name, retry=FAST_RETRY) as client:
        yield client


@pytest.fixture
def reviewer(service: Service, tenant: Tenant) -> Iterator[ApprovalsClient]:
    with ApprovalsClient(service.base_url, tenant.reviewer_token, tenant.name, retry=FAST_RETRY) as client:
        yield client


@pytest.fixture
def async_clients(service: Service, tenant: Tenant) -> tuple[AsyncApprovalsClient, AsyncApprovalsClient]:
    """(agent, reviewer); closed by the test."""
    return (
        AsyncApprovalsClient(service.base_url, tenant.agent_token, tenant.name, retry=FAST_RETRY),
        AsyncApprovalsClient(service.base_url, tenant.reviewer_token, tenant.name, retry=FAST_RETRY),
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SENSITIVE_READ = {"type": "document_read", "resource": "finance/q3-report"}  # require_approval
PLAIN_READ = {"type": "document_read", "resource": "docs/handbook.md"}  # allow
WRITE = {"type": "file_delete", "resource": "docs/handbook.md"}  # deny
