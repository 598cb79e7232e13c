"""Run one scenario of the stand-in app against oracd ($ORACD_SOCKET) and print one JSON line of what happened.

``python scenario.py NAME [options]`` from a copy of this directory (the app reads its data from
``$DATA_DIR``; the client's ``config_path`` default, ``data/model_configs.yaml``, is relative to the
working directory, as in ORAC).  The script's directory comes first on ``sys.path``, so ``orac`` is
this app's package.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from typing import Any, Dict, List

from oracd_protocol.blocking import call_sync

from orac.api import dependencies, lifecycle
from orac.api.routes import models as model_routes
from orac.api.routes import system
from orac.models import GenerationRequest, ModelLoadRequest
from orac.services.generation_service import GenerationService

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GRAMMAR_WITH_GARAGE = (
    'root ::= "{\\"device\\":\\"" device "\\",\\"action\\":\\"" action "\\",\\"location\\":\\"" location "\\"}"\n'
    'device ::= "lights" | "heating" | "UNKNOWN"\n'
    'action ::= "on" | "off" | "UNKNOWN"\n'
    'location ::= "garage" | "hall" | "UNKNOWN"\n')


def child() -> Dict[str, Any]:
    return call_sync("status", timeout=30)["child"]


async def command(text: str, topic: str) -> Dict[str, Any]:
    svc = GenerationService(client=await dependencies.get_client(), topic_manager=dependencies.get_topic_manager(),
                            backend_manager=dependencies.get_backend_manager(),
                            backend_grammar_generator=dependencies.get_backend_grammar_generator(),
                            last_command_storage=dependencies.get_last_command_storage())
    r = await svc.generate_text(GenerationRequest(prompt=text), topic)
    pr = svc.last_prompt_response
    return {"text": text, "response": r.response, "status": r.status, "usage": pr.usage,
            "finish_reason": pr.finish_reason, "app_class": type(pr).__module__ == "orac.models",
            "temperature": pr.temperature, "top_p": pr.top_p, "top_k": pr.top_k, "max_tokens": pr.max_tokens,
            "json_mode": pr.json_mode, "system_prompt": pr.system_prompt, "prompt": pr.prompt,
            "pid": child()["pid"]}


async def commands(args: argparse.Namespace) -> Dict[str, Any]:
    if args.startup:
        await lifecycle.on_startup()
    warm_after_startup = child()["warm"]
    done: List[Dict[str, Any]] = []
    for text in args.texts:
        done.append(await command(text, args.topic))
    client = await dependencies.get_client()
    state_file = os.path.join("data", ".oracd-prewarm.json")
    out = {"commands": done, "warm_after_startup": warm_after_startup, "warm": child()["warm"],
           "state_file": json.load(open(state_file)) if os.path.exists(state_file) else None,
           "grammar_reads": client.grammar_files.reads}
    await lifecycle.on_shutdown()
    return out


async def grammar_change(args: argparse.Namespace) -> Dict[str, Any]:
    await lifecycle.on_startup()
    before = await command(args.texts[0], "home")
    path = dependencies.get_backend_grammar_generator().get_grammar_file_path("ha1")
    inode = os.stat(path).st_ino
    bm = dependencies.get_backend_manager()
    bm.backends["ha1"]["device_mappings"] = {
        "fan.garage": {"enabled": True, "device_type": "fan", "location": "garage"},
        "switch.kettle": {"enabled": True, "device_type": "kettle", "location": "shed"}}
    bm.backends["ha1"]["actions"] = ["spin", "boil"]
    bm.save_backend("ha1")                     # rewrites the grammar file in place, then stop_all_servers_sync
    grammar = path.read_text()
    after = [await command(t, "home") for t in args.texts]
    out = {"before": before, "after": after, "reset_count": bm.last_reset, "same_inode": os.stat(path).st_ino == inode,
           "grammar": grammar, "grammar_reads": (await dependencies.get_client()).grammar_files.reads}
    await lifecycle.on_shutdown()
    return out


async def routes_health(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {"health_first": await system.health_check(), "status": await system.get_status()}
    out["models"] = [m.model_dump() for m in (await model_routes.list_models()).models]
    out["load"] = (await model_routes.load_model(ModelLoadRequest(name=SMOL))).model_dump()
    client = await dependencies.get_client()
    default = os.path.join(os.environ["DATA_DIR"], "grammars", "default.gbnf")
    server = await client._ensure_server_running(model=SMOL, temperature=0.1, top_p=0.9, top_k=10, json_mode=True,
                                                 grammar_file=default)
    out["server"] = {k: getattr(server, k) for k in ("model", "pid", "state", "grammar_file", "pre_warmed",
                                                      "process", "restart_count", "consecutive_failures")}
    out["prewarm"] = await client.prewarm_kv_cache(SMOL)
    out["pid_before"] = child()["pid"]
    out["health"] = client.get_health_status()
    out["stopped"] = client.stop_all_servers_sync(reason="grammar regen for backend ha1")
    out["stopped_again"] = client.stop_all_servers_sync(reason="again")
    # ORAC may call it from a worker thread too (a sync route): no running loop there, so the changed
    # prefix is warmed before it returns.  The grammar changes first (a new location), in place.
    with open(default, "w") as f:
        f.write(GRAMMAR_WITH_GARAGE)
    box: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(n=client.stop_all_servers_sync(reason="from a thread")))
    t.start()
    t.join(60)
    out["stopped_in_thread"] = box.get("n")
    out["pid_after_stop"] = child()["pid"]
    out["warm_after_thread"] = child()["warm"]
    out["command"] = await command("turn off the hall lights", "general")
    out["unload_other"] = (await model_routes.unload_model("not-loaded-model.gguf")).model_dump()
    out["unload"] = (await model_routes.unload_model(SMOL)).model_dump()
    out["health_unloaded"] = await system.health_check()
    out["state_unloaded"] = child()["state"]
    out["load_missing"] = (await model_routes.load_model(ModelLoadRequest(name="no-such-model.gguf"))).model_dump()
    out["load_again"] = (await model_routes.load_model(ModelLoadRequest(name=SMOL))).model_dump()
    out["pid_reloaded"] = child()["pid"]
    out["health_reloaded"] = await system.health_check()
    await lifecycle.on_shutdown()
    c = child()
    out["after_shutdown"] = {"state": c["state"], "pid": c["pid"]}
    return out


async def json_builtin(args: argparse.Namespace) -> Dict[str, Any]:
    client = await dependencies.get_client()
    r = await client.generate("Describe a red apple as a JSON object with keys name and colour.", SMOL,
                              json_mode=True, max_tokens=48)
    free = await client.generate("Say hello to the kitchen.", SMOL, json_mode=False, max_tokens=12)
    out = {"text": r.text, "usage": r.usage, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
           "system_prompt": r.system_prompt, "free_text": free.text, "free_temperature": free.temperature,
           "free_top_p": free.top_p, "free_top_k": free.top_k, "free_max_tokens": free.max_tokens}
    try:
        await client.generate("   ", SMOL)
    except ValueError as exc:
        out["blank"] = str(exc)
    try:
        await client.generate("hi", "no-such-model.gguf", json_mode=False)
    except FileNotFoundError as exc:
        out["missing"] = str(exc)
    await client.cleanup()
    return out


SCENARIOS = {"commands": commands, "grammar_change": grammar_change, "routes_health": routes_health,
             "json_builtin": json_builtin}


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--startup", action="store_true")
    p.add_argument("--topic", default="general")
    p.add_argument("texts", nargs="*")
    args = p.parse_intermixed_args()
    print(json.dumps(asyncio.run(SCENARIOS[args.scenario](args)), default=str))


if __name__ == "__main__":
    main()
