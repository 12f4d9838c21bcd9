"""End to end through the `chordcdn` command: real processes, real TCP.

Starts `chordcdn node` processes on 127.0.0.1 port 0, walks and checks the ring
with `chordcdn ring --check`, looks keys up with `chordcdn lookup`, kills a node
with SIGKILL and stops one with SIGTERM. Every wait polls against a deadline.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from dht.identity import Role
from dht.ids import IdSpace

from .processes import check_passes_within, chordcdn, client_environment, node_processes

async def ring_json(via: str) -> dict:
    result = await chordcdn("ring", "--via", via, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_four_processes_sigkill_and_check_passes_again() -> None:
    async with node_processes(4) as nodes:
        result = await check_passes_within(nodes[0].address)
        assert b"4 nodes; ring consistent" in result.stdout
        victim = nodes[2]
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        result = await check_passes_within(nodes[0].address)
        assert b"3 nodes; ring consistent" in result.stdout
        assert victim.address.encode() not in result.stdout


async def test_check_reports_wrong_links_with_exit_1() -> None:
    # Freeze one node (SIGSTOP): it stops answering but keeps its sockets, and
    # `ring --check` must report the links to it as wrong. Its neighbours drop it
    # within about a second (call timeouts follow measured round trips, so no
    # --rpc-timeout slows that), so the check races them: with maintenance every
    # 2 s it usually wins, and the freeze is tried again, after the ring heals,
    # when it does not.
    async with node_processes(3, [["--stabilize-interval", "2"]] * 3) as nodes:
        frozen = nodes[1]
        for _ in range(4):
            await check_passes_within(nodes[0].address)
            frozen.process.send_signal(signal.SIGSTOP)
            try:
                result = await chordcdn("ring", "--via", nodes[0].address, "--check", "--timeout", "0.5")
            finally:
                frozen.process.send_signal(signal.SIGCONT)
            if result.returncode != 0:
                break
        assert result.returncode == 1
        assert b"wrong:" in result.stderr and frozen.address.encode() in result.stderr


async def test_lookup_names_the_true_owner() -> None:
    async with node_processes(4) as nodes:
        await check_passes_within(nodes[0].address)
        ring = await ring_json(nodes[0].address)
        ids = sorted(int(node["id"], 16) for node in ring["nodes"])
        for key_text in ("hello.txt", "0x1", "f" * 64):
            result = await chordcdn("lookup", key_text, "--via", nodes[1].address, "--json")
            assert result.returncode == 0, result.stderr
            reply = json.loads(result.stdout)
            key = IdSpace().key_for(key_text)
            assert int(reply["key"], 16) == key
            expected = next((i for i in ids if i >= key), ids[0])
            assert int(reply["owner"]["id"], 16) == expected
            assert reply["path"][0] == nodes[1].address and reply["hops"] == len(reply["path"]) - 1


async def test_sigterm_is_a_graceful_leave() -> None:
    async with node_processes(4) as nodes:
        await check_passes_within(nodes[0].address)
        leaver = nodes[3]
        leaver.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await leaver.process.wait()
        assert code == 0
        rest = await leaver.process.stdout.receive_some(4096)  # type: ignore[union-attr]
        assert b"left the ring" in leaver.output + rest
        # The neighbours were told directly, so the very next check passes.
        result = await chordcdn("ring", "--via", nodes[0].address, "--check")
        assert result.returncode == 0, result.stderr
        assert b"3 nodes" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ring", "--via", "127.0.0.1:1"], 3, b"cannot reach 127.0.0.1:1"),
        (["ring", "--via", "nonsense"], 2, b"is not HOST:PORT"),
        (["lookup", "k", "--via", "127.0.0.1:1"], 3, b"cannot reach"),
        (["node", "--listen", "127.0.0.1:0", "--join", "127.0.0.1:1"], 3, b"cannot join via 127.0.0.1:1"),
        (["node", "--listen", "127.0.0.1:0", "--id", "xyz", "--insecure"], 2, b"not a hexadecimal identifier"),
        (["node", "--listen", "127.0.0.1:0", "--id", "ab"], 2, b"comes from its certificate"),
        (["node", "--listen", "0.0.0.0:0"], 2, b"--advertise"),
        (["node", "--listen", "127.0.0.1:0", "--advertise", "0.0.0.0:4000"], 2, b"unspecified address"),
    ],
)
async def test_bad_input_gets_a_clear_error(args: list[str], code: int, message: bytes) -> None:
    env = client_environment("cli-node", Role.NODE) if args[0] == "node" else None
    result = await chordcdn(*args, env=env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("role", "extra", "message"),
    [
        (Role.READER, [], b"is a reader certificate; this needs a node certificate"),
        (None, [], b"missing --cert, --key, --ca"),
        (Role.NODE, ["--ca", "/nonexistent/ca.crt"], b"/nonexistent/ca.crt"),
    ],
)
async def test_node_credentials_problems_are_clear(role: Role | None, extra: list[str], message: bytes) -> None:
    env = client_environment("cli-wrong", role) if role else {k: v for k, v in os.environ.items() if not k.startswith("CHORDCDN_")}
    result = await chordcdn("node", "--listen", "127.0.0.1:0", *extra, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and b"Traceback" not in result.stderr


async def test_demo_once_runs_the_whole_cdn_and_content_flows_through_every_tier() -> None:
    result = await chordcdn("--log-level", "WARNING", "demo", "--once")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "ring     8 nodes, consistent" in out
    assert "published 5 files into the ring" in out
    for tier in ("detail=dht", "detail=peer"):
        assert tier in out
    assert out.count("/cid/") >= 2 and "curl" in out
