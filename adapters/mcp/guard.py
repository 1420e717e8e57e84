"""The SSRF guard: a user's MCP server URL may reach public addresses only (unless the settings allow
private networks), checked when the URL is registered and again at every connection.

At a connection the guard resolves the host itself, checks every address the name resolves to, and
connects to one of those checked addresses, so a DNS answer that changes between the check and the
connection (rebinding) has nothing left to change. TLS and the Host header still use the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from domain.errors import ValidationFailed

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the IP addresses (as text) the host resolves to
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

RESOLVE_TIMEOUT_S = 10.0
ATTEMPT_TIMEOUT_S = 3.0  # per address when a name has several (the last one gets the whole timeout)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # one HTTP response from an MCP server, at most
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedAddress(httpcore2.ConnectError):
    """A connection the guard refused: the message says which address and why (never a header)."""


class ResponseTooLarge(httpx2.ReadError):
    """A server's response grew past MAX_RESPONSE_BYTES: read no further (memory is everyone's)."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                        proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _same_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address this IPv6 address reaches: mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d)
    or compatible (::a.b.c.d)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or int(address) >> 32 == 0:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4 or Teredo address carries."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_problem(address: Address) -> str | None:
    """Why a user's server may not be reached at this address (None: it may)."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if isinstance(address, ipaddress.IPv6Address):
        if (same := _same_ipv4(address)) is not None:
            return address_problem(same)
        tunnelled = _tunnelled_ipv4(address)
        if tunnelled is not None and (problem := address_problem(tunnelled)) is not None:
            return problem
    for attribute, kind in (("is_link_local", "a link-local"), ("is_multicast", "a multicast"),
                            ("is_private", "a private"), ("is_reserved", "a reserved")):
        if getattr(address, attribute):
            return f"{kind} address"
    if not address.is_global:
        return "not a public address"
    return None


def _parse_ip(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])


@cache
def _ssl_context() -> ssl.SSLContext:
    # Built once (loading the CA bundle costs ~25 ms) and shared: it holds no one's data.
    return httpx2.create_ssl_context()


class NetworkGuard:
    """The domain's UrlGuard, and the network backend of every connection to a user's server.

    `resolver` is for tests (an answer that changes between two lookups); by default the system's.
    """

    def __init__(self, *, allow_private_networks: bool, resolver: Resolver | None = None) -> None:
        self.allow_private_networks = allow_private_networks
        self._resolver = resolver or system_resolver

    async def check(self, url: str) -> None:
        """ValidationFailed unless `url` is http(s), with a host whose addresses are allowed (a name
        that does not resolve now passes: each connection resolves and checks it again)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValidationFailed("'url' is not a valid URL.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationFailed("'url' must be an http:// or https:// URL with a host.")
        if parts.username is not None or parts.password is not None:
            raise ValidationFailed("'url' may not carry a user name or password: send credentials as "
                                   "headers, which are stored encrypted.")
        try:
            await self.resolve(parts.hostname, port)
        except BlockedAddress as exc:
            raise ValidationFailed(f"'url': {exc}.") from None
        except httpcore2.ConnectError:
            pass  # a name that does not resolve now is taken: every connection checks it again

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to: all of `host`'s, each checked (BlockedAddress if one is
        refused; ConnectError if the name does not resolve)."""
        try:
            literal: Address | None = _parse_ip(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    addresses = list(await self._resolver(host, port))
            except (OSError, TimeoutError) as exc:
                raise httpcore2.ConnectError(f"the name {host!r} could not be resolved") from exc
            if not addresses:
                raise httpcore2.ConnectError(f"the name {host!r} could not be resolved")
        if not self.allow_private_networks:
            for text in addresses:
                problem = address_problem(_parse_ip(text))
                if problem is not None:
                    shown = f"{host} is" if literal is not None else f"{host} resolves to {text},"
                    raise BlockedAddress(f"{shown} {problem}, and this service does not connect to "
                                         "loopback, private or link-local addresses")
        return addresses

    def backend(self) -> GuardedBackend:
        return GuardedBackend(self)

    def http_client(self, *, headers: Mapping[str, str], timeout_s: float,
                    event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None) -> httpx2.AsyncClient:
        """A client for one operation on a user's server: every connection goes through the guard."""
        return http_client(headers=headers, timeout_s=timeout_s, event_hooks=event_hooks,
                           backend=self.backend())


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """Resolves the host itself, checks every address, connects to a checked one (by IP)."""

    def __init__(self, guard: NetworkGuard) -> None:
        self._guard = guard
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
                          ) -> httpcore2.AsyncNetworkStream:
        addresses = await self._guard.resolve(host, port)
        failure: Exception | None = None
        for n, address in enumerate(addresses, 1):
            # An address that does not answer (a broken IPv6 route) leaves time for the next.
            attempt = timeout if n == len(addresses) else min(timeout or ATTEMPT_TIMEOUT_S, ATTEMPT_TIMEOUT_S)
            try:
                return await self._inner.connect_tcp(address, port, timeout=attempt,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
                                  ) -> httpcore2.AsyncNetworkStream:
        raise BlockedAddress("a user's MCP server is reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Transport(httpx2.AsyncHTTPTransport):
    """httpx2's transport with a network backend of our choosing (it has no argument for one)."""

    def __init__(self, backend: httpcore2.AsyncNetworkBackend | None) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False, retries=0)
        if backend is not None:
            if not isinstance(getattr(self, "_pool", None), httpcore2.AsyncConnectionPool):
                raise RuntimeError("httpx2 changed: its transport has no connection pool to guard")
            self._pool = httpcore2.AsyncConnectionPool(ssl_context=_ssl_context(), network_backend=backend,
                                                       max_connections=4, retries=0)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
            await response.aclose()
            raise ResponseTooLarge(_too_large(), request=request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Capped(response.stream, request)
        return response


def _too_large() -> str:
    limit = MAX_RESPONSE_BYTES
    return f"an answer larger than {limit / 2**20:g} MB" if limit >= 2**20 else \
        f"an answer larger than {limit} bytes"


class _Capped(httpx2.AsyncByteStream):
    def __init__(self, stream: httpx2.AsyncByteStream, request: httpx2.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._stream:
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(_too_large(), request=self._request)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def http_client(*, headers: Mapping[str, str], timeout_s: float,
                backend: httpcore2.AsyncNetworkBackend | None,
                event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None) -> httpx2.AsyncClient:
    """One operation's client: its own connections (nothing pooled across users), no proxies from
    the environment, redirects left to the MCP transport (same origin only)."""
    return httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(timeout_s),
                              transport=_Transport(backend), trust_env=False,
                              event_hooks={key: list(value) for key, value in (event_hooks or {}).items()})
