"""One way to connect to NATS, for the seat ledger and the work queue alike.

Credentials and TLS are the engine's own (nats-py's), taken from the URL and the
environment, the same for every familiar process (ledger, queue, worker, submitter,
``fleet``):

* ``nats://USER:PASSWORD@HOST:PORT`` or ``nats://TOKEN@HOST:PORT``: user/password or token;
* ``FAMILIAR_NATS_CREDS``: a ``.creds`` file (a user JWT and its nkey seed);
* ``FAMILIAR_NATS_NKEY``: an nkey seed file (``SU...``);
* ``tls://HOST:PORT`` (or a server that requires TLS): TLS, verified against the system's
  CAs or ``FAMILIAR_NATS_CA``; ``FAMILIAR_NATS_CERT`` (+ ``FAMILIAR_NATS_CERT_KEY`` when
  the key is in another file) for a client certificate.

The ``.creds`` and nkey forms need the Python package ``nkeys`` (``pip install nkeys``);
nats-py signs the server's challenge with it. A refused login or a certificate that does
not verify is a configuration mistake: one line, exit 2, at once (not after ``wait_s``).
A server that is not on this host, reached without any credential, gets one warning line:
anyone who can reach it can read and rewrite familiar's results, chunks and seats.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client

from familiar.errors import ConfigError, LedgerSetupError

log = structlog.get_logger("familiar.ledger")

__all__ = [
    "TRANSIENT",
    "NatsAuth",
    "NatsConnection",
    "connect",
    "denial",
    "public_url",
    "split_urls",
]

T = TypeVar("T")

#: what a call to an absent or restarting server raises
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    nats.errors.Error,
    nats.js.errors.ServiceUnavailableError,
)

_warned_open: set[str] = set()


def split_urls(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s,]*@")


def public_url(url: str) -> str:
    """``url`` (one or several, comma-separated) with every userinfo (``user:password@``,
    ``token@``) removed: what familiar prints and stores."""
    return _USERINFO.sub(r"\1", url)


def strip_userinfo(text: str) -> str:
    """Every ``scheme://userinfo@`` in free text (a command line) without its userinfo."""
    return public_url(text)


def denial(error: str) -> str:
    """What a "permissions violation" error says was refused (``publish to "X"``), or "".
    The server drops the message and the request times out: the error is the only clue."""
    found = re.search(r"permissions violation for (\w+ to \S+)", error, re.IGNORECASE)
    return found[1].strip("'\"").lower().replace('"', "") if found else ""


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env_file(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise LedgerSetupError(f"{name}: {value} is not a readable file")
    return value


@dataclass(frozen=True)
class NatsAuth:
    """What the environment says about NATS credentials and TLS."""

    creds: str | None = None
    nkey: str | None = None
    ca: str | None = None
    cert: str | None = None
    cert_key: str | None = None

    @classmethod
    def from_env(cls) -> NatsAuth:
        auth = cls(
            creds=_env_file("FAMILIAR_NATS_CREDS"),
            nkey=_env_file("FAMILIAR_NATS_NKEY"),
            ca=_env_file("FAMILIAR_NATS_CA"),
            cert=_env_file("FAMILIAR_NATS_CERT"),
            cert_key=_env_file("FAMILIAR_NATS_CERT_KEY"),
        )
        if auth.creds and auth.nkey:
            raise LedgerSetupError("set FAMILIAR_NATS_CREDS or FAMILIAR_NATS_NKEY, not both")
        if auth.cert_key and not auth.cert:
            raise LedgerSetupError("FAMILIAR_NATS_CERT_KEY needs FAMILIAR_NATS_CERT")
        if (auth.creds or auth.nkey) and importlib.util.find_spec("nkeys") is None:
            which = "FAMILIAR_NATS_CREDS" if auth.creds else "FAMILIAR_NATS_NKEY"
            raise LedgerSetupError(
                f"{which} needs the Python package nkeys to sign the server's challenge:"
                " pip install nkeys (or use a user/password or token in the URL)"
            )
        return auth

    def tls_context(self, urls: list[str]) -> ssl.SSLContext | None:
        """A TLS context when TLS is asked for (a ``tls://`` URL, a CA or a client cert);
        ``None`` leaves nats-py its default (the system's CAs if the server wants TLS)."""
        wanted = self.ca or self.cert or any(u.lower().startswith("tls://") for u in urls)
        if not wanted:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.cert_key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise LedgerSetupError(f"NATS TLS files cannot be used: {exc}") from None
        return ctx

    def options(self, urls: list[str]) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.creds:
            opts["user_credentials"] = self.creds
        if self.nkey:
            opts["nkeys_seed"] = self.nkey
        ctx = self.tls_context(urls)
        if ctx is not None:
            opts["tls"] = ctx
        return opts

    def has_credentials(self, url: str) -> bool:
        return bool(self.creds or self.nkey or self.cert or urlsplit(url).username)


def warn_if_open(urls: list[str], auth: NatsAuth) -> None:
    """One warning line (per process and server) for a server off this host reached
    without any credential."""
    for url in urls:
        host = urlsplit(url).hostname or ""
        if _is_loopback(host) or auth.has_credentials(url) or host in _warned_open:
            continue
        _warned_open.add(host)
        log.warning(
            f"the NATS server {public_url(url)} is not on this host and familiar connects to "
            "it without credentials: anyone who can reach it can rewrite familiar's results, "
            "chunks and seats (set a user in the URL, FAMILIAR_NATS_CREDS or FAMILIAR_NATS_NKEY;"
            " see docs/QUEUE.md)"
        )


def _refused(exc: BaseException) -> bool:
    """A login refused or a certificate refused: asking again will not help."""
    if isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _register_secrets(urls: list[str]) -> None:
    from familiar.logs import register_secret

    for url in urls:
        parts = urlsplit(url)
        register_secret(parts.password)
        if parts.username and parts.password is None:  # a token
            register_secret(parts.username)


async def connect(
    nc: Client,
    url: str,
    *,
    wait_s: float,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
    name: str = "familiar",
    refused: type[ConfigError] = LedgerSetupError,
) -> None:
    """Connect ``nc`` to ``url`` (comma-separated servers: a cluster), the first connect
    bounded by ``wait_s``; afterwards the client reconnects forever in the background
    (every 0.5 s) and notices a dead server within about 10 s (pings every 5 s).

    Credentials and TLS come from the URL and the environment (see the module's doc); a
    refused login or certificate raises ``refused`` (a ``ConfigError``) at once."""
    urls = split_urls(url)
    _register_secrets(urls)
    auth = NatsAuth.from_env()
    options = auth.options(urls)
    warn_if_open(urls, auth)
    denied: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    connecting = True

    async def on_error(exc: Exception) -> None:
        if connecting and _refused(exc):  # the one error line says it: no warning first
            if not denied.done():
                denied.set_result(exc)
            return
        if connecting and isinstance(exc, ConnectionResetError):
            return  # how a refusal often starts: the next try says what it was
        await error_cb(exc)

    attempt = asyncio.ensure_future(
        nc.connect(
            urls,
            error_cb=on_error,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, takes seconds
            connect_timeout=max(1, min(5, int(wait_s))),
            ping_interval=5,
            max_outstanding_pings=2,
            name=name,  # how the server's connection list shows us
            **options,
        )
    )
    try:
        done, _ = await asyncio.wait(
            (attempt, denied), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        connecting = False
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
    if attempt in done:
        attempt.result()  # raises what the connect raised
        return
    if denied in done:
        exc = denied.result()
        what = (
            "and familiar could not agree on TLS (FAMILIAR_NATS_CA: the CA that signed the "
            "server's certificate; FAMILIAR_NATS_CERT: a client certificate, if it wants one)"
            if isinstance(exc, ssl.SSLError)
            else "refused familiar's credentials (the user/password or token in the URL, "
            "FAMILIAR_NATS_CREDS, FAMILIAR_NATS_NKEY)"
        )
        raise refused(f"the NATS server at {public_url(url)} {what}: {exc}")
    raise TimeoutError  # the callers name the last connect error (their error_cb saw it)


class NatsConnection:
    """One connection to NATS as the seat ledger and the work queue both hold it: the
    bounded first connect, the outage state (down since, up since), one warning per
    outage, and :meth:`call` (an operation retried while the server is away, up to
    ``wait_s``, then ``unavailable``).

    ``what`` names the service in messages ("seat ledger", "work queue"); ``waits`` says
    what waits during an outage; ``unavailable`` and ``refused`` are the errors raised
    (a ``LedgerUnavailable``/``QueueUnavailable``, a ``ConfigError``). The ledger warns
    while it opens and then only through :meth:`warn` (``quiet=True``); the queue warns
    at the first error of an outage. ``on_change(up)`` runs on every loss and return.
    """

    def __init__(
        self,
        url: str,
        *,
        wait_s: float,
        what: str,
        waits: str,
        unavailable: type[Exception],
        refused: type[ConfigError] = LedgerSetupError,
        name: str = "familiar",
        quiet: bool = False,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.url, self.where = url, public_url(url)
        self.wait_s, self.what, self.waits, self.name = wait_s, what, waits, name
        self._unavailable, self._refused, self._quiet = unavailable, refused, quiet
        self._on_change = on_change
        self.nc: Client | None = None
        self.error = ""
        self.denied = ""  # what the server's permissions refused, if anything
        self.warned = False
        self.down_since: float | None = None
        self.up_since = float("-inf")
        #: set when the connection comes back after a loss
        self.reconnected = asyncio.Event()
        self._opening = False

    async def open(self) -> Client:
        """Connect, waiting at most ``wait_s``; ``unavailable`` when that is not enough."""
        nc = Client()
        self._opening = True
        try:
            await connect(
                nc,
                self.url,
                wait_s=self.wait_s,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
                name=self.name,
                refused=self._refused,
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, TimeoutError | OSError | nats.errors.Error):
                raise self.unavailable(str(exc)) from exc
            raise
        finally:
            self._opening = False
        self.nc, self.warned = nc, False
        return nc

    async def close(self, *, flush: bool = False) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        if flush:  # what is still buffered goes out first
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)

    @property
    def up(self) -> bool:
        return self.nc is not None and self.down_since is None

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", url=self.where, error=repr(exc))
        self.error = str(exc) or type(exc).__name__
        denied = denial(self.error)
        if denied:
            if not self.denied and self._quiet:
                log.warning(
                    f"the NATS server at {self.where} does not let this user {denied}: the "
                    f"{self.what} cannot work (docs/QUEUE.md lists the permissions familiar"
                    " needs)"
                )
            self.denied = self.denied or denied
            if not self._quiet:
                return  # the request then times out; ``call`` says why
        if self._opening and self._quiet and not self.warned:
            self.warned = True
            log.warning(
                f"waiting for the {self.what} at {self.where} (unreachable: {self.error}); "
                f"giving up in {self.wait_s:g} s"
            )
        elif not self._quiet:
            self.warn()

    async def _on_disconnect(self) -> None:
        log.debug("nats disconnected", url=self.where)
        if self.down_since is None:
            self.down_since = time.monotonic()
        if self._on_change is not None:
            self._on_change(False)

    async def _on_reconnect(self) -> None:
        log.debug("nats reconnected", url=self.where)
        self.down_since, self.up_since, self.warned = None, time.monotonic(), False
        self.reconnected.set()
        if self._on_change is not None:
            self._on_change(True)

    def warn(self, error: str = "") -> None:
        """The one warning of this outage."""
        if not self.warned:
            self.warned = True
            log.warning(
                f"the {self.what} at {self.where} is unreachable ({error or self.error}); "
                f"{self.waits} at most {self.wait_s:g} s"
            )

    def unavailable(self, error: str = "") -> Exception:
        error = error or self.error
        return self._unavailable(
            f"the {self.what} at {self.where} stayed unreachable for {self.wait_s:g} s"
            + (f" ({error})" if error else "")
        )

    def refusal(self) -> ConfigError:
        """What the server's permissions refused, as the configuration error it is."""
        return self._refused(
            f"the NATS server at {self.where} does not let this user {self.denied}"
            " (docs/QUEUE.md lists the permissions familiar needs)"
        )

    async def call(self, op: Callable[[], Awaitable[T]], what: str = "") -> T:
        """``await op()``, retried while the server is away, up to ``wait_s``."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        pause = 0.1
        while True:
            try:
                return await op()
            except TRANSIENT as exc:
                refused = isinstance(exc, nats.js.errors.APIError)
                if refused and not isinstance(exc, nats.js.errors.ServiceUnavailableError):
                    raise  # the server answered: no use asking again
                if self.denied:
                    raise self.refusal() from exc
                self.error = f"{what + ': ' if what else ''}{exc or type(exc).__name__}"
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise self.unavailable() from exc
                self.warn()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
