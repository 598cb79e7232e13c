"""The client inside the ORAC app: the app's own ``orac`` package, its ``llama_cpp_client`` a re-export.

Each case builds a throwaway app package named ``orac`` in tmp_path (with its
own ``models.PromptResponse`` and ``logger``) and runs a subprocess with that
directory first on sys.path, against the module's real oracd.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict


from helpers import REPO, SMOL

APP_MODELS = textwrap.dedent('''
    """The app's own models (a stand-in for ORAC's orac/models.py)."""
    from typing import Dict, Optional

    from pydantic import BaseModel

    APP_MARKER = "the ORAC app"


    class PromptResponse(BaseModel):
        """Response from a model generation."""
        response: str
        elapsed_ms: float
        model: str
        prompt: str
        finish_reason: Optional[str] = None
        usage: Optional[Dict[str, int]] = None

        def summary(self) -> str:          # app-only behaviour callers rely on
            return f"{self.model}: {self.response[:20]}"
''')

APP_LOGGER = textwrap.dedent('''
    import logging


    def get_logger(name):
        return logging.getLogger(name)
''')

# the whole of the app's new orac/llama_cpp_client.py: a short re-export of the installed client
APP_LLAMA_CPP_CLIENT = textwrap.dedent('''
    """orac.llama_cpp_client -- now served by oracd (the installed oracd_client)."""
    from oracd_client.compat import LlamaCppClient  # noqa: F401
    from orac.logger import get_logger
    from orac.models import PromptResponse  # noqa: F401

    logger = get_logger(__name__)
''')

RUNNER = textwrap.dedent('''
    import asyncio, json, sys
    app_dir = sys.argv[1]
    if app_dir:
        sys.path.insert(0, app_dir)

    import orac
    import orac.models as app_models
    from orac.llama_cpp_client import LlamaCppClient
    import oracd_client.response

    SMOL = sys.argv[2]

    async def main():
        c = LlamaCppClient()
        r = await c.generate(SMOL, "Say hi.", max_tokens=4, temperature=0.0, timeout=120)
        rs = await asyncio.gather(*(c.generate(SMOL, f"Say {i}.", max_tokens=2, timeout=120) for i in range(3)))
        return r, rs

    r, rs = asyncio.run(main())
    app_cls = getattr(app_models, "PromptResponse", None)
    print(json.dumps({
        "orac_file": orac.__file__,
        "is_app_class": app_cls is not None and type(r) is app_cls,
        "all_app_class": app_cls is not None and all(type(x) is app_cls for x in rs),
        "is_client_class": type(r) is oracd_client.response.PromptResponse,
        "summary": r.summary() if hasattr(r, "summary") else None,
        "fields": r.model_dump(),
    }))
''')


def write_app(root: Path, models_src: str = APP_MODELS, client_src: str = APP_LLAMA_CPP_CLIENT) -> Path:
    pkg = root / "orac"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The ORAC app (test stand-in)."""\n')
    (pkg / "models.py").write_text(models_src)
    (pkg / "logger.py").write_text(APP_LOGGER)
    (pkg / "llama_cpp_client.py").write_text(client_src)
    return root


def run(tmp_path: Path, oracd: Any, app_dir: str) -> Dict[str, Any]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = dict(os.environ, ORACD_SOCKET=str(oracd.socket))
    env.pop("ORAC_MODELS_PATH", None)
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-W", "error", str(script), app_dir, SMOL], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == "", res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_generate_returns_the_apps_own_prompt_response(oracd, tmp_path):
    app = write_app(tmp_path / "app")
    out = run(tmp_path, oracd, str(app))
    assert Path(out["orac_file"]) == app / "orac" / "__init__.py"     # the app's orac, not the installed one
    assert out["is_app_class"] and out["all_app_class"] and not out["is_client_class"]
    assert out["summary"].startswith(f"{SMOL}: ")
    f = out["fields"]
    assert f["model"] == SMOL and f["prompt"] == "Say hi." and f["elapsed_ms"] > 0
    assert f["usage"]["completion_tokens"] > 0 and f["finish_reason"] in ("stop", "length")


def test_app_models_without_prompt_response_fall_back_to_the_clients(oracd, tmp_path):
    app = write_app(tmp_path / "app", models_src='"""No PromptResponse here."""\n',
                    client_src="from oracd_client.compat import LlamaCppClient  # noqa: F401\n")
    out = run(tmp_path, oracd, str(app))
    assert Path(out["orac_file"]) == app / "orac" / "__init__.py"
    assert out["is_client_class"] and not out["is_app_class"]


def test_app_model_with_only_the_core_fields(oracd, tmp_path):
    """An older app model (no finish_reason/usage, extra fields forbidden) still gets its own class."""
    old = textwrap.dedent('''
        from pydantic import BaseModel, ConfigDict

        class PromptResponse(BaseModel):
            model_config = ConfigDict(extra="forbid")
            response: str
            elapsed_ms: float
            model: str
            prompt: str
    ''')
    app = write_app(tmp_path / "app", models_src=old)
    out = run(tmp_path, oracd, str(app))
    assert out["is_app_class"] and set(out["fields"]) == {"response", "elapsed_ms", "model", "prompt"}


def test_standalone_uses_the_installed_orac_package(oracd, tmp_path):
    out = run(tmp_path, oracd, "")
    assert Path(out["orac_file"]) == REPO / "client" / "orac" / "__init__.py"
    assert out["is_client_class"] and out["is_app_class"]      # orac.models.PromptResponse is the client's
