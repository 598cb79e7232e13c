"""The old way, re-run faithfully: ORAC's LlamaCppClient spawned llama-cli for every generate.

Each call pays process start and model load, exactly as before oracd.  The
``llama-cli`` that ORAC called is the one upstream has since renamed
``llama-completion`` (today's ``llama-cli`` is an interactive chat UI), so the
baseline runs ``llama-completion -no-cnv`` with the old arguments: model,
prompt, n-predict, temperature, top-p, top-k.  ``timeout`` defaults to the old
client's 30 s; the benchmark passes its own, generous one (bench.harness.Timeouts).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, Optional


class OldCliClient:
    def __init__(self, cli_bin: Path, models_path: Path):
        self.cli_bin = Path(cli_bin)
        self.models_path = Path(models_path)

    async def generate(self, model: str, prompt: str, temperature: float = 0.7, top_p: float = 0.7,
                       top_k: int = 40, max_tokens: Optional[int] = None, timeout: int = 30) -> Dict[str, Any]:
        if not prompt.strip():
            raise ValueError("Prompt cannot be empty")
        path = self.models_path / (model if model.endswith(".gguf") else model + ".gguf")
        if not path.exists():
            raise FileNotFoundError(f"Model not found: {path}")
        cmd = [str(self.cli_bin), "-m", str(path), "-p", prompt, "-n", str(max_tokens or 512),
               "--temp", str(temperature), "--top-p", str(top_p), "--top-k", str(top_k),
               "-no-cnv", "--no-display-prompt"]
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise Exception(f"Generation timed out after {timeout} seconds")
        if proc.returncode != 0:
            raise Exception(f"llama-cli failed: {err.decode(errors='replace')[-500:]}")
        return {"response": out.decode(errors="replace").strip(), "elapsed_ms": (time.perf_counter() - t0) * 1000,
                "model": model, "prompt": prompt}
