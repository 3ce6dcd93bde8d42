"""One MCP tool call over streamable HTTP, for tests that must make it from inside a network
namespace (``ip netns exec NS python mcp_call.py ...``), where the node's 127.0.0.1 lives.

    python tests/network/mcp_call.py URL TOOL [ARGS_JSON]

Prints one JSON line: {"ok": true, "result": <structured content>} or
{"ok": false, "error": "..."}. Exit status 0 when the tool succeeded, 1 when it returned an
error, 2 when the server could not be reached or the call failed in transport.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio
from mcp import Client


async def _call(url: str, tool: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with Client(url) as client:
        res = await client.call_tool(tool, args)
    if res.is_error:
        return 1, {"ok": False, "error": repr(res.content)}
    return 0, {"ok": True, "result": res.structured_content}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    url, tool = argv[0], argv[1]
    args = json.loads(argv[2]) if len(argv) == 3 else {}
    try:
        code, out = trio.run(_call, url, tool, args)
    except BaseException as exc:  # noqa: BLE001 - report any transport failure as data
        if isinstance(exc, KeyboardInterrupt):
            raise
        code, out = 2, {"ok": False, "error": f"{type(exc).__name__}: {exc!r}"}
    print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
