"""A byte relay that carries MCP connections into a network namespace without giving the test's
own namespace an interface there. Unix socket paths are not namespaced, so two relays meet at one:

    ip netns exec NS python ns_forward.py unix2tcp SOCK_PATH PORT   # inside: SOCK_PATH -> 127.0.0.1:PORT
    python ns_forward.py tcp2unix PORT SOCK_PATH                    # outside: 127.0.0.1:PORT -> SOCK_PATH

Then ``http://127.0.0.1:PORT/mcp`` in the test reaches the node's MCP server on the namespace's
loopback. Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(mode: str, a: str, b: str) -> None:
    async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            if mode == "unix2tcp":
                r2, w2 = await asyncio.open_connection("127.0.0.1", int(b))
            else:
                r2, w2 = await asyncio.open_unix_connection(b)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, w2), _pipe(r2, w))

    if mode == "unix2tcp":
        server = await asyncio.start_unix_server(relay, a)
    elif mode == "tcp2unix":
        server = await asyncio.start_server(relay, "127.0.0.1", int(a))
    else:
        raise SystemExit(f"unknown mode {mode!r}: unix2tcp or tcp2unix")
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
