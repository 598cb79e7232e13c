"""Backends and their device mappings; saving one regenerates its grammar, then resets the LLM client
(``stop_all_servers_sync``), exactly as ORAC HEAD's ``BackendManager.save_backend`` does."""
import json
import logging
from pathlib import Path
from typing import Dict, Optional

from orac.config import data_dir

logger = logging.getLogger(__name__)


class BackendManager:
    def __init__(self, data_dir_: str = None):
        self.data_dir = Path(data_dir_ or data_dir())
        self.backends_dir = self.data_dir / "backends"
        self.backends_dir.mkdir(parents=True, exist_ok=True)
        self.backends: Dict[str, Dict] = {}
        for f in self.backends_dir.glob("*.json"):
            b = json.loads(f.read_text())
            self.backends[b["id"]] = b
        self.last_reset = None

    def get_backend(self, backend_id: str) -> Optional[Dict]:
        return self.backends.get(backend_id)

    def save_backend(self, backend_id: str) -> bool:
        (self.backends_dir / f"{backend_id}.json").write_text(json.dumps(self.backends[backend_id]))
        try:
            from orac.backend_grammar_generator import BackendGrammarGenerator
            result = BackendGrammarGenerator(self, str(self.data_dir)).generate_and_save_grammar(backend_id)
            if result["success"]:
                try:
                    from orac.api import dependencies
                    client = dependencies._client
                    if client is not None:
                        self.last_reset = client.stop_all_servers_sync(reason=f"grammar regen for backend {backend_id}")
                except Exception as cache_err:
                    logger.warning(f"Failed to reset llama-server after grammar regen: {cache_err}")
        except Exception as e:
            logger.warning(f"Failed to auto-regenerate grammar for backend {backend_id}: {e}")
        return True
