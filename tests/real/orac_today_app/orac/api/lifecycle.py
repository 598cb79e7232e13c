"""Startup and shutdown, as ORAC's orac/api/lifecycle.py: the default model with the newest backend
grammar (else default.gbnf), then ``prewarm_kv_cache``."""
import glob
import os

from orac.api.dependencies import cleanup_dependencies, get_client
from orac.config import ModelConfig, data_dir, load_favorites
from orac.logger import get_logger

logger = get_logger(__name__)


def _find_backend_grammar(data_dir_: str):
    backend_grammars = glob.glob(os.path.join(data_dir_, "grammars", "backend_*.gbnf"))
    return max(backend_grammars, key=os.path.getmtime) if backend_grammars else None


async def on_startup():
    client = await get_client()
    favorites = load_favorites()
    if favorites.get("default_model"):
        try:
            grammar_file = _find_backend_grammar(data_dir())
            if not grammar_file:
                grammar_file = os.path.join(data_dir(), "grammars", "default.gbnf")
                if not os.path.exists(grammar_file):
                    grammar_file = None
            await client._ensure_server_running(
                model=favorites["default_model"],
                temperature=ModelConfig.GRAMMAR_TEMPERATURE,
                top_p=ModelConfig.GRAMMAR_TOP_P,
                top_k=ModelConfig.GRAMMAR_TOP_K,
                json_mode=True,
                grammar_file=grammar_file
            )
            await client.prewarm_kv_cache(favorites["default_model"])
            logger.info("Default model loaded successfully")
        except Exception as e:
            logger.error(f"Failed to load default model: {e}")
            raise


async def on_shutdown():
    await cleanup_dependencies()
