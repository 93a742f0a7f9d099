"""Opens many idle, fully authenticated client connections (SCRAM-SHA-256 or md5).

Raw asyncio sockets rather than asyncpg: ten thousand asyncpg connections cost the
benchmark host far more memory and CPU than the proxy being measured, and the PBKDF2 step
of SCRAM is cached per (salt, iterations) so the client side stays cheap when the server
reuses a salt.
"""

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from functools import lru_cache


class LoginError(Exception):
    pass


@lru_cache(maxsize=64)
def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    return head[:1], await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)


def _error_text(body: bytes) -> str:
    fields = dict((f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f)
    return f"{fields.get(b'C', '?')}: {fields.get(b'M', '?')}"


async def login(host: str, port: int, user: str, password: str, db: str):
    """Returns the (reader, writer) of a connection that reached ReadyForQuery."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        params = f"user\0{user}\0database\0{db}\0\0".encode()
        writer.write(struct.pack("!II", len(params) + 8, 196608) + params)
        nonce = first_bare = client_final = None
        salted = None
        while True:
            tag, body = await _read(reader)
            if tag == b"E":
                raise LoginError(_error_text(body))
            if tag == b"Z":
                return reader, writer
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!I", body[:4])[0]
            if code == 0:
                continue
            if code == 5:  # md5: "md5" + md5(md5(password + user) + salt)
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                digest = "md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                writer.write(_msg(b"p", digest.encode() + b"\0"))
            elif code == 10:  # SASL: send client-first
                nonce = base64.b64encode(os.urandom(18)).decode()
                first_bare = f"n=,r={nonce}"
                data = ("n,," + first_bare).encode()
                writer.write(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(data)) + data))
            elif code == 11:  # SASLContinue: server-first -> client-final with proof
                server_first = body[4:].decode()
                attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                if not attrs["r"].startswith(nonce):
                    raise LoginError("server nonce does not extend ours")
                salted = _salted(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                stored_key = hashlib.sha256(client_key).digest()
                client_final = f"c=biws,r={attrs['r']}"
                auth_message = f"{first_bare},{server_first},{client_final}".encode()
                signature = hmac.digest(stored_key, auth_message, "sha256")
                proof = bytes(a ^ b for a, b in zip(client_key, signature))
                writer.write(_msg(b"p", f"{client_final},p={base64.b64encode(proof).decode()}"
                                  .encode()))
            elif code == 12:  # SASLFinal: the server proves it knows the password too
                server_key = hmac.digest(salted, b"Server Key", "sha256")
                auth_message = f"{first_bare},{server_first},{client_final}".encode()
                expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
                if body[4:].decode().split("v=", 1)[-1].encode() != expected:
                    raise LoginError("bad server signature")
            else:
                raise LoginError(f"unsupported authentication request {code}")
            await writer.drain()
    except BaseException:
        writer.close()
        raise


async def open_idle(host: str, port: int, n: int, user: str, password: str, db: str,
                    concurrency=100) -> list:
    """Opens n connections, at most `concurrency` logging in at a time; returns the writers."""
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            return (await login(host, port, user, password, db))[1]

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    writers = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for w in writers:
            w.close()
        raise LoginError(f"{len(errors)} of {n} logins failed, e.g. {errors[0]!r}")
    return writers


def close_all(writers: list):
    for w in writers:
        w.write(_msg(b"X", b""))  # Terminate, so the server side frees it at once
        w.close()
