"""Measure today's ORAC on oracd, side by side: ``python -m bench.today --socket S``.

Everything goes through the today shim (``oracd_client.compat.today``) with prompts
shaped as ORAC's generation service builds them (model template, the service's
instruction and grammar hint, ``User: <command>\\nAssistant: {"device":"``) and a
grammar file shaped like ORAC's ``default.gbnf``.

(a) The first command after start-up.  *cold*: nothing of its prompt is in the KV
    cache (a session tag at the start of the system prompt makes each repetition's
    prompt new, same length).  *prewarm*: ``prewarm_kv_cache`` first (as ORAC's
    lifecycle calls it), then the same kind of command.  Timed: the command alone.
(b) A grammar change, then the next command.  *oracd*: the grammar file is
    rewritten in place (new enumerations), ``stop_all_servers_sync`` (as ORAC's
    backend manager calls it; it re-warms the new prefix), then the command: same
    llama-server.  *ORAC's way*: the file is rewritten, the server killed
    (``unload_model``), loaded cold (``load_model``), ``prewarm_kv_cache``, then the
    command.  Timed: from the rewrite to the answer, and the command alone.

Repetitions alternate the two variants; p50 (median) and min are printed.  The
daemon must be able to load ``--model``; the measurement changes its registered
warm prefix and loads/unloads the model.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, List, Optional

from oracd_client.compat.today import LlamaCppClient
from oracd_client.compat.today_prompts import command_head
from oracd_protocol.blocking import call_sync

CHATML = ("<|im_start|>system\n{system_prompt}\n<|im_end|>\n<|im_start|>user\n{user_prompt}\n<|im_end|>\n"
          "<|im_start|>assistant\n")
SYSTEM = ("/no_think You are a JSON-only formatter. For each user input, map the device to the grammar-defined "
          "device and select the most appropriate action and location. Use \"UNKNOWN\" for unrecognized inputs. "
          "Output only the single-line JSON object with keys: \"device\", \"action\", \"location\".")
INSTRUCTION = "/no_think Match input to JSON."
COMMANDS = ["turn on the kitchen lights", "switch off the bedroom heating", "open the blinds in the hall",
            "set the living room lights to 40%", "turn the music down in the kitchen"]
ROOT = 'root ::= "{\\"device\\":\\"" device "\\",\\"action\\":\\"" action "\\",\\"location\\":\\"" location "\\"}"'


def grammar(devices: List[str], locations: List[str]) -> str:
    """A grammar shaped like ORAC's default.gbnf: three enumerations, UNKNOWN in each."""
    pct = " | ".join(f'"{i}%"' for i in range(0, 101, 10))
    return "\n".join([
        ROOT,
        "device ::= " + " | ".join(f'"{d}"' for d in devices + ["UNKNOWN"]),
        f"pct ::= {pct}",
        'set-action ::= "set " pct',
        'action ::= "on" | "off" | "toggle" | "open" | "close" | "up" | "down" | "UNKNOWN" | set-action',
        "location ::= " + " | ".join(f'"{x}"' for x in locations + ["UNKNOWN"]), ""])


def service_prompt(grammar_text: str, command: str) -> str:
    """What ORAC's generation service passes to ``generate`` in grammar mode."""
    return command_head(INSTRUCTION, grammar_text) + f'{command}\nAssistant: {{"device":"'


def p50(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Bench:
    def __init__(self, socket: str, model: str, work: str, reps: int):
        self.socket, self.model, self.reps = socket, model, reps
        self.grammar_file = os.path.join(work, "data", "grammars", "backend_bench.gbnf")
        os.makedirs(os.path.dirname(self.grammar_file), exist_ok=True)
        self.write_grammar(0)
        self.client = LlamaCppClient(model_path=os.path.join(work, "models"),
                                     config_path=os.path.join(work, "data", "model_configs.yaml"),
                                     socket_path=socket, state_path="")
        self.set_system(SYSTEM)

    def set_system(self, system: str) -> None:
        # this client's copy of model_configs.yaml (ORAC loads it once per process)
        self.client.model_configs = {"models": {self.model: {
            "prompt_format": {"template": CHATML}, "system_prompt": system,
            "recommended_settings": {"max_tokens": 50, "temperature": 0.1, "top_p": 0.9, "top_k": 10}}}}

    def write_grammar(self, i: int) -> str:
        text = grammar(["lights", "heating", "blinds", "music", f"lamp{i}"],
                       ["bedroom", "bathroom", "kitchen", "hall", "living room", f"room{i}"])
        with open(self.grammar_file, "w") as fh:      # in place, as ORAC's grammar generator writes it
            fh.write(text)
        return text

    def pid(self) -> Optional[int]:
        return call_sync("status", socket_path=self.socket, timeout=30)["child"].get("pid")

    async def command(self, i: int) -> Dict[str, Any]:
        text = self.client.grammar_files.read(self.grammar_file) or ""
        t0 = time.perf_counter()
        r = await self.client.generate(prompt=service_prompt(text, COMMANDS[i % len(COMMANDS)]), model=self.model,
                                       temperature=0.1, top_p=0.9, top_k=10, max_tokens=50, timeout=120,
                                       json_mode=False, grammar_file=self.grammar_file)
        ms = (time.perf_counter() - t0) * 1000
        await self.client._settled(self.model)          # a background re-warm ends before the next step
        u = r.usage or {}
        return {"ms": ms, "cached": u.get("cached_tokens", 0), "prompt": u.get("prompt_tokens", 0),
                "completion": u.get("completion_tokens", 0)}

    async def first_commands(self) -> Dict[str, List[Dict[str, Any]]]:
        out: Dict[str, List[Dict[str, Any]]] = {"cold": [], "prewarm": [], "prewarm_call": []}
        await self.client._ensure_server_running(self.model, json_mode=True, grammar_file=self.grammar_file)
        await self.command(0)                            # the server's own first-request costs, paid once
        for i in range(self.reps):
            self.set_system(f"[session {uuid.uuid4().hex[:8]}] " + SYSTEM)
            out["cold"].append(await self.command(i))
            self.set_system(f"[session {uuid.uuid4().hex[:8]}] " + SYSTEM)
            t0 = time.perf_counter()
            assert await self.client.prewarm_kv_cache(self.model, INSTRUCTION)
            out["prewarm_call"].append({"ms": (time.perf_counter() - t0) * 1000})
            out["prewarm"].append(await self.command(i))
        self.set_system(SYSTEM)
        return out

    async def grammar_changes(self) -> Dict[str, List[Dict[str, Any]]]:
        out: Dict[str, List[Dict[str, Any]]] = {"oracd": [], "orac": []}
        await self.client._ensure_server_running(self.model, json_mode=True, grammar_file=self.grammar_file)
        await self.client.prewarm_kv_cache(self.model, INSTRUCTION)
        await self.command(0)
        n = 0
        for i in range(self.reps):
            # oracd: rewrite, reset (re-warms the new prefix), next command on the same llama-server
            n += 1
            pid0 = self.pid()
            t0 = time.perf_counter()
            self.write_grammar(n)
            self.client.stop_all_servers_sync(reason="grammar regen (measure)")
            await self.client._settled(self.model)
            c = await self.command(i)
            out["oracd"].append({**c, "total_ms": (time.perf_counter() - t0) * 1000, "same_pid": self.pid() == pid0})
            # ORAC's way: rewrite, kill the server, cold load, prewarm, next command
            n += 1
            pid0 = self.pid()
            t0 = time.perf_counter()
            self.write_grammar(n)
            await self.client.unload_model(self.model)
            loaded = await self.client.load_model(self.model)
            assert loaded["status"] == "success", loaded
            await self.client.prewarm_kv_cache(self.model, INSTRUCTION)
            c = await self.command(i)
            out["orac"].append({**c, "total_ms": (time.perf_counter() - t0) * 1000, "same_pid": self.pid() == pid0})
        return out


def speedup(slow: List[Dict[str, Any]], fast: List[Dict[str, Any]], key: str) -> float:
    return p50([x[key] for x in slow]) / p50([x[key] for x in fast])


def report(model: str, reps: int, a: Dict[str, List[Dict[str, Any]]], b: Dict[str, List[Dict[str, Any]]]) -> str:
    def row(name: str, xs: List[Dict[str, Any]], key: str = "ms") -> str:
        ms = [x[key] for x in xs]
        cached = p50([x["cached"] for x in xs]) if "cached" in xs[0] else None
        prompt = p50([x["prompt"] for x in xs]) if "prompt" in xs[0] else None
        toks = f"{cached:>6.0f} / {prompt:<6.0f}" if cached is not None else " " * 15
        return f"  {name:<44} {p50(ms):>9.1f} {min(ms):>9.1f}   {toks}".rstrip()

    lines = [f"today's ORAC on oracd: {model}, {reps} repetitions each, times in ms (p50, min)", "",
             "(a) first command after start-up                 p50       min   cached / prompt tokens",
             row("cold (nothing of the prompt warmed)", a["cold"]),
             row("after prewarm_kv_cache", a["prewarm"]),
             row("(the prewarm_kv_cache call itself)", a["prewarm_call"]),
             f"  first command speed-up (p50): {speedup(a['cold'], a['prewarm'], 'ms'):.2f}x",
             "",
             "(b) grammar change -> next answer                p50       min   cached / prompt tokens",
             row("oracd: rewrite + stop_all_servers_sync, total", b["oracd"], "total_ms"),
             row("  of which the command", b["oracd"]),
             row("ORAC's way: kill, cold load, prewarm, total", b["orac"], "total_ms"),
             row("  of which the command", b["orac"]),
             f"  same llama-server pid: oracd {sum(x['same_pid'] for x in b['oracd'])}/{reps}, "
             f"ORAC's way {sum(x['same_pid'] for x in b['orac'])}/{reps}",
             f"  grammar change to answer speed-up (p50): {speedup(b['orac'], b['oracd'], 'total_ms'):.2f}x"]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="measure-today-") as work:
        bench = Bench(args.socket, args.model, work, args.reps)
        try:
            a = await bench.first_commands()
            b = await bench.grammar_changes()
        finally:
            await bench.client.cleanup()
    print(" ".join([os.path.basename(sys.executable), "-m", "bench.today"] + sys.argv[1:]))
    print(report(args.model, args.reps, a, b))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.today", description=__doc__.split("\n")[0])
    p.add_argument("--socket", default=None, help="oracd's socket (default: $ORACD_SOCKET, ...)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    if args.socket is None:
        from oracd_protocol.names import default_socket_path
        args.socket = default_socket_path()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
