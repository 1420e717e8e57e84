"""The SSRF guard: users' MCP server URLs reach public addresses only (unless allowed), checked at
registration and again at every connection (no DNS answer that changes in between gets around it).
No test depends on internet DNS: public addresses are literals, names resolve through a resolver
the test gives (or /etc/hosts, for localhost)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.mcp import guard as guard_module
from adapters.mcp.guard import BlockedAddress, NetworkGuard, ResponseTooLarge
from domain.errors import ValidationFailed

REFUSED = [
    ("http://127.0.0.1/mcp", "loopback"),
    ("http://127.1.2.3:8080/mcp", "loopback"),
    ("http://10.1.2.3/mcp", "private"),
    ("http://172.16.0.5/mcp", "private"),
    ("http://192.168.1.1/mcp", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://0.0.0.0/mcp", "unspecified"),
    ("http://100.64.0.1/mcp", "not a public address"),
    ("http://[::1]/mcp", "loopback"),
    ("http://[fe80::1]/mcp", "link-local"),
    ("http://[fc00::1]/mcp", "private"),
    ("http://[::ffff:127.0.0.1]/mcp", "loopback"),
    ("http://[::ffff:10.0.0.1]/mcp", "private"),
    ("http://[::ffff:169.254.169.254]/mcp", "link-local"),
    ("http://[2002:7f00:1::]/mcp", "loopback"),  # 6to4 of 127.0.0.1
    ("http://[64:ff9b::a00:1]/mcp", "private"),  # NAT64 of 10.0.0.1
    ("http://localhost:9000/mcp", "loopback"),  # a name that resolves to loopback (/etc/hosts)
    ("http://2130706433/mcp", "loopback"),  # 127.0.0.1 written as one number
]


def resolver(answers: dict[str, Sequence[Sequence[str]]]):
    """A resolver whose answers for a name change from one lookup to the next (the last repeats)."""
    calls: dict[str, int] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"unknown name {host}")
        n = calls[host] = calls.get(host, 0) + 1
        sequence = answers[host]
        return list(sequence[min(n, len(sequence)) - 1])

    return resolve


@pytest.mark.parametrize(("url", "kind"), REFUSED)
async def test_loopback_private_and_link_local_addresses_are_refused(url: str, kind: str) -> None:
    with pytest.raises(ValidationFailed, match=kind) as refused:
        await NetworkGuard(allow_private_networks=False).check(url)
    assert "does not connect to loopback, private or link-local addresses" in refused.value.message


@pytest.mark.parametrize(("url", "kind"), REFUSED)
async def test_the_setting_allows_them(url: str, kind: str) -> None:
    await NetworkGuard(allow_private_networks=True).check(url)


@pytest.mark.parametrize("url", ["https://93.184.216.34/mcp", "http://93.184.216.34:8080/mcp",
                                 "https://[2606:4700:4700::1111]/mcp", "https://[::ffff:93.184.216.34]/"])
async def test_public_addresses_are_allowed(url: str) -> None:
    await NetworkGuard(allow_private_networks=False).check(url)


async def test_a_name_is_refused_if_any_of_its_addresses_is() -> None:
    guard = NetworkGuard(allow_private_networks=False, resolver=resolver({
        "public.test": [["93.184.216.34", "2606:4700:4700::1111"]],
        "mixed.test": [["93.184.216.34", "10.0.0.7"]],
        "mapped.test": [["::ffff:192.168.0.1"]],
    }))
    await guard.check("https://public.test/mcp")
    with pytest.raises(ValidationFailed, match=r"mixed.test resolves to 10.0.0.7, a private address"):
        await guard.check("https://mixed.test/mcp")
    with pytest.raises(ValidationFailed, match="private"):
        await guard.check("https://mapped.test/mcp")


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://93.184.216.34/mcp", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("http:///mcp", "http:// or https://"),
    ("https://user:pw@93.184.216.34/mcp", "user name or password"),
    ("http://93.184.216.34:99999/mcp", "not a valid URL"),
])
async def test_urls_that_are_not_http_are_refused(url: str, says: str) -> None:
    guard = NetworkGuard(allow_private_networks=True, resolver=resolver({}))
    with pytest.raises(ValidationFailed, match=says):
        await guard.check(url)


async def test_a_name_that_does_not_resolve_now_is_taken_and_checked_at_each_connection() -> None:
    guard = NetworkGuard(allow_private_networks=False, resolver=resolver({}))
    await guard.check("https://nowhere.test/mcp")
    with pytest.raises(httpcore2.ConnectError, match="could not be resolved"):
        await guard.resolve("nowhere.test", 443)


class HttpServer:
    """A plain HTTP server on 127.0.0.1 that records each request's Host header."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("host:"):
                self.hosts.append(line.split(":", 1)[1].strip())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> HttpServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    async with HttpServer() as server:
        yield server


async def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused_at_connection(
        http_server: HttpServer) -> None:
    guard = NetworkGuard(allow_private_networks=False, resolver=resolver({
        "rebind.test": [["93.184.216.34"], ["127.0.0.1"]],  # public when checked, loopback after
    }))
    url = f"http://rebind.test:{http_server.port}/mcp"
    await guard.check(url)
    async with guard.http_client(headers={}, timeout_s=5) as client:
        with pytest.raises(httpx2.ConnectError,
                           match=r"rebind\.test resolves to 127\.0\.0\.1, a loopback") as failed:
            await client.get(url)
    assert isinstance(failed.value.__cause__, BlockedAddress)
    assert http_server.connections == 0  # refused before any connection was made


async def test_connections_go_to_the_checked_address_with_the_name_as_host(http_server: HttpServer) -> None:
    guard = NetworkGuard(allow_private_networks=True, resolver=resolver({"mcp.test": [["127.0.0.1"]]}))
    async with guard.http_client(headers={"Authorization": "Bearer t"}, timeout_s=5) as client:
        response = await client.get(f"http://mcp.test:{http_server.port}/mcp")
    assert response.text == "ok"
    assert http_server.hosts == [f"mcp.test:{http_server.port}"]


async def test_every_connection_is_checked_not_only_the_first(http_server: HttpServer) -> None:
    guard = NetworkGuard(allow_private_networks=False, resolver=resolver({
        "flip.test": [["127.0.0.1"]]}))
    async with guard.http_client(headers={}, timeout_s=5) as client:
        for _ in range(3):
            with pytest.raises(httpx2.ConnectError, match="loopback"):
                await client.get(f"http://flip.test:{http_server.port}/")
    assert http_server.connections == 0


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_names_the_host_not_the_address(tmp_path: Path) -> None:
    """The connection goes to the checked IP, and the TLS handshake still says the host name (SNI)
    and checks the certificate against it."""
    cert, key = _self_signed(tmp_path, "mcp.test")
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    guard = NetworkGuard(allow_private_networks=True, resolver=resolver({"mcp.test": [["127.0.0.1"]]}))
    try:
        async with guard.http_client(headers={}, timeout_s=5) as client:
            # Self-signed, so the client refuses the certificate: after it said which host it wants.
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://mcp.test:{port}/mcp")
    finally:
        server.close()
        await server.wait_closed()
    assert server_names == ["mcp.test"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_response_past_the_size_limit_is_not_read(monkeypatch: pytest.MonkeyPatch,
                                                          chunked: bool) -> None:
    """Memory is every user's: a server that answers without end is cut off (with a length or without)."""
    monkeypatch.setattr(guard_module, "MAX_RESPONSE_BYTES", 10_000)
    body = b"x" * 50_000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 5000):
                writer.write(b"%x\r\n%s\r\n" % (5000, body[start:start + 5000]))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with guard_module.http_client(headers={}, timeout_s=5, backend=None) as client:
            with pytest.raises(ResponseTooLarge, match="an answer larger than 10000 bytes"):
                await client.get(f"http://127.0.0.1:{port}/")
            monkeypatch.setattr(guard_module, "MAX_RESPONSE_BYTES", len(body))
            assert len((await client.get(f"http://127.0.0.1:{port}/")).content) == len(body)
    finally:
        server.close()
        await server.wait_closed()


async def test_the_mcp_sdk_is_made_ready_only_once_a_user_has_a_server() -> None:
    """A run of a user without servers (and no operator server) costs one read, nothing more."""
    from datetime import UTC, datetime

    from adapters.mcp.lazy import LazyMcpToolSource, LazyNetworkGuard
    from container.settings import McpSettings
    from domain.entities import McpServer
    from tests.fakes import InMemoryMcpServerRepository

    servers = InMemoryMcpServerRepository()
    lazy = LazyMcpToolSource(operator_servers=[], servers=servers, settings=McpSettings(),
                             guard=LazyNetworkGuard(allow_private_networks=True))
    assert (await lazy.tools_for("usr_a")).tools == () and lazy._source is None
    lazy.forget("usr_a")
    await lazy.aclose()
    await servers.add(McpServer(user_id="usr_a", name="mine", url="http://127.0.0.1:9/mcp",
                                created_at=datetime.now(UTC)))
    found = await lazy.tools_for("usr_a")
    assert lazy._source is not None and "mine" in found.unreachable
    await lazy.aclose()
