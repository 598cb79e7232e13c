"""Grammar files from a backend's device mappings, written the way ORAC writes them (in place, UNKNOWN added)."""
import logging
from pathlib import Path
from typing import Any, Dict

from orac.config import data_dir

logger = logging.getLogger(__name__)

ROOT = 'root ::= "{\\"device\\":\\"" device "\\",\\"action\\":\\"" action "\\",\\"location\\":\\"" location "\\"}"'


class BackendGrammarGenerator:
    def __init__(self, backend_manager, data_dir_: str = None):
        self.backend_manager = backend_manager
        self.grammars_dir = Path(data_dir_ or data_dir()) / "grammars"

    def get_grammar_file_path(self, backend_id: str) -> Path:
        return self.grammars_dir / f"backend_{backend_id}.gbnf"

    def generate_and_save_grammar(self, backend_id: str) -> Dict[str, Any]:
        backend = self.backend_manager.get_backend(backend_id)
        if not backend:
            return {"success": False, "error": f"Backend {backend_id} not found"}
        enabled = [m for m in backend.get("device_mappings", {}).values() if m.get("enabled")]
        devices = sorted({m["device_type"] for m in enabled} | {"UNKNOWN"})
        locations = sorted({m["location"] for m in enabled} | {"UNKNOWN"})
        actions = backend.get("actions") or ["on", "off", "UNKNOWN"]
        grammar = "\n".join([ROOT, "",
                             "device ::= " + " | ".join(f'"{d}"' for d in devices),
                             "location ::= " + " | ".join(f'"{x}"' for x in locations), "",
                             "action ::= " + " | ".join(f'"{a}"' for a in actions)])
        path = self.get_grammar_file_path(backend_id)
        with open(path, "w") as f:          # in place, as ORAC does (same inode)
            f.write(grammar)
        return {"success": True, "grammar_file": str(path), "grammar_content": grammar}
