"""Many idle client connections that finish startup and authentication, with the raw protocol.

Cleartext (pgtenant: the JWT is the password) or SCRAM-SHA-256 (PgBouncer), optionally inside TLS
after an SSLRequest, like libpq with sslmode=require.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import time

from .util import log

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PROTOCOL_3 = 196608


class LoginError(Exception):
    pass


def _startup(user: str, database: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_3)
    for k, v in (("user", user), ("database", database), ("application_name", "pgtenant-bench-idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


async def _read_msg(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    length = struct.unpack("!i", head[1:])[0]
    return head[:1], await reader.readexactly(length - 4)


def _error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '')} {fields.get('M', '')}"


class _Scram:
    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def first(self) -> bytes:
        data = ("n,," + self.first_bare).encode()
        return b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise LoginError("SCRAM nonce mismatch")
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


async def login(host: str, port: int, user: str, database: str, password: str,
                tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if tls is not None:
            writer.write(SSL_REQUEST)
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise LoginError(f"server refused TLS ({answer!r})")
            await writer.start_tls(tls, server_hostname="localhost")
        writer.write(_startup(user, database))
        await writer.drain()
        scram = None
        while True:
            kind, body = await _read_msg(reader)
            if kind == b"R":
                code = struct.unpack("!i", body[:4])[0]
                if code == 0:
                    continue
                if code == 3:
                    writer.write(_msg(b"p", password.encode() + b"\0"))
                elif code == 10:
                    if b"SCRAM-SHA-256\0" not in body[4:]:
                        raise LoginError(f"no SCRAM-SHA-256 among {body[4:]!r}")
                    scram = _Scram(password)
                    writer.write(_msg(b"p", scram.first()))
                elif code == 11:
                    writer.write(_msg(b"p", scram.final(body[4:])))
                elif code == 12:
                    continue
                else:
                    raise LoginError(f"unsupported authentication request {code}")
                await writer.drain()
            elif kind == b"E":
                raise LoginError(_error_text(body))
            elif kind == b"Z":
                return reader, writer
            # S (ParameterStatus), K (BackendKeyData), N (notice): ignored
    except BaseException:
        writer.close()
        raise


def tls_context(ca_file) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = True
    return ctx


async def _open_many(n: int, concurrency: int, **kw) -> tuple[list, list[str]]:
    sem = asyncio.Semaphore(concurrency)
    conns: list = []
    errors: list[str] = []
    done = 0
    last = time.monotonic()

    async def one():
        nonlocal done, last
        async with sem:
            try:
                conns.append(await login(**kw))
            except (OSError, LoginError, asyncio.IncompleteReadError, ssl.SSLError) as e:
                errors.append(f"{type(e).__name__}: {e}")
            done += 1
            if time.monotonic() - last > 5:
                last = time.monotonic()
                log(f"    {done}/{n} logins ({len(errors)} failed)")

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, errors


async def _close_all(conns: list) -> None:
    for _, writer in conns:
        try:
            writer.write(b"X\0\0\0\4")
            writer.close()
        except Exception:
            pass
    await asyncio.sleep(0.5)


def hold_idle(n: int, measure, *, concurrency: int = 64, settle: float = 3.0, **kw) -> dict:
    """Opens `n` logged-in connections, waits `settle` s, calls `measure()` while they are held, closes them.

    Returns {"opened", "errors", "first_error", "seconds", "measure": measure()'s value}.
    """
    async def main():
        t0 = time.monotonic()
        conns, errors = await _open_many(n, concurrency, **kw)
        seconds = time.monotonic() - t0
        await asyncio.sleep(settle)
        value = measure()
        # Connections the server closed meanwhile would make the measurement meaningless.
        closed = sum(1 for reader, _ in conns if reader.at_eof())
        await _close_all(conns)
        return {"opened": len(conns), "errors": len(errors), "first_error": errors[0] if errors else None,
                "closed_by_server": closed, "seconds": seconds, "measure": value}

    return asyncio.run(main())
