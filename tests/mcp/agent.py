"""An agent's side of isol8's MCP tools, with the official MCP Python SDK (pinned in the test venv).

Connects over Streamable HTTP (--url, --key) or stdio (--stdio CMD ARG...), runs one scenario and
prints a JSON report on stdout for the Rust test (tests/tests/mcp.rs) to check.

Scenarios:
  tools       initialize, list tools, a session kept across calls, results, an error, an image,
              a file written then read, list and close the session
  matplotlib  a figure from `packages: ["matplotlib"]` (an image the test built)
  nokey       connect without a key: the error the client sees
"""
import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import zlib

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def tiny_png():
    """A valid 1x1 PNG, made with the standard library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def summary(result):
    """What the test checks of one tool result."""
    content = []
    for block in result.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "image":
            content.append({"type": "image", "mimeType": block.mime_type,
                            "bytes": len(base64.b64decode(block.data))})
        else:
            content.append({"type": block.type})
    return {"isError": bool(result.is_error), "content": content,
            "structured": result.structured_content}


async def tools_scenario(session, session_id):
    report = {}
    init = await session.initialize()
    report["server"] = init.server_info.name
    listed = await session.list_tools()
    report["tools"] = {t.name: {"schema": t.input_schema,
                                "readOnly": t.annotations.read_only_hint if t.annotations else None,
                                "destructive": t.annotations.destructive_hint if t.annotations else None}
                       for t in listed.tools}
    call = session.call_tool
    report["assign"] = summary(await call("run_code", {"code": "x = 41", "sessionId": session_id}))
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    report["expr"] = summary(await call(
        "run_code", {"code": "print('first')\nx + 1", "sessionId": session_id},
        progress_callback=on_progress))
    report["progress"] = progress
    html = "class Table:\n    def _repr_html_(self):\n        return '<table><tr><td>1</td></tr></table>'\ndisplay(Table())"
    report["html"] = summary(await call("run_code", {"code": html, "sessionId": session_id}))
    png = base64.b64encode(tiny_png()).decode()
    image = "import base64\nclass Dot:\n    def _repr_png_(self):\n        return base64.b64decode(%r)\nDot()" % png
    report["image"] = summary(await call("run_code", {"code": image, "sessionId": session_id}))
    report["exit"] = summary(await call("run_code", {"code": "import sys\nprint('bye')\nsys.exit(3)"}))
    report["timeout"] = summary(await call("run_code", {"code": "while True: pass", "timeoutMs": 1000}))
    report["badRuntime"] = summary(await call("run_code", {"code": "1", "runtime": "cobol"}))
    report["overPolicy"] = summary(await call("run_code", {"code": "1", "timeoutMs": 10_000_000}))
    report["write"] = summary(await call("write_file", {
        "sessionId": session_id, "path": "notes/hello.txt", "content": "hello from the agent"}))
    report["read"] = summary(await call("read_file", {"sessionId": session_id, "path": "notes/hello.txt"}))
    report["readInCode"] = summary(await call("run_code", {
        "code": "open('notes/hello.txt').read().upper()", "sessionId": session_id}))
    report["command"] = summary(await call("run_command", {"cmd": "echo $((6 * 7))", "sessionId": session_id}))
    report["list"] = summary(await call("list_sessions", {}))
    report["close"] = summary(await call("close_session", {"sessionId": session_id}))
    report["listAfter"] = summary(await call("list_sessions", {}))
    return report


async def matplotlib_scenario(session, session_id):
    await session.initialize()
    code = ("import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\n"
            "plt.title('squares')\n"
            "print('plotted')")
    report = {"cell": summary(await session.call_tool(
        "run_code", {"code": code, "sessionId": session_id, "packages": ["matplotlib"]}))}
    script = code + "\nplt.show()\nplt.figure(); plt.plot([3, 2, 1])\nprint('end')"
    report["oneShot"] = summary(await session.call_tool(
        "run_code", {"code": script, "packages": ["matplotlib"]}))
    await session.call_tool("close_session", {"sessionId": session_id})
    return report


SCENARIOS = {"tools": tools_scenario, "matplotlib": matplotlib_scenario}


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--scenario", default="tools")
    parser.add_argument("--session", default="mcp-agent")
    parser.add_argument("--stdio", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.scenario == "nokey":
        try:
            async with httpx2.AsyncClient() as http:
                async with streamable_http_client(args.url, http_client=http) as (read, write):
                    async with ClientSession(read, write) as session:
                        await asyncio.wait_for(session.initialize(), 20)
            report = {"error": None}
        except BaseException as exc:  # noqa: BLE001 - the failure is the report
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            report = {"error": "%s: %s" % (type(exc).__name__, exc)}
        print(json.dumps(report))
        return
    run = SCENARIOS[args.scenario]
    if args.stdio:
        # The whole environment: the server it starts must see the same ISOL8_* settings.
        params = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                report = await run(session, args.session)
    else:
        headers = {"Authorization": "Bearer " + args.key}
        async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
            async with streamable_http_client(args.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    report = await run(session, args.session)
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
