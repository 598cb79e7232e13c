"""Singletons, as ORAC's orac/api/dependencies.py: one LlamaCppClient(model_path=...) for the app."""
import os

from orac.backend_grammar_generator import BackendGrammarGenerator
from orac.backend_manager import BackendManager
from orac.llama_cpp_client import LlamaCppClient
from orac.logger import get_logger
from orac.topic_manager import TopicManager

logger = get_logger(__name__)

_client: LlamaCppClient = None
_topic_manager = None
_backend_manager = None
_backend_grammar_generator = None
_last_command_storage = {"command": "", "timing": {}}


async def get_client() -> LlamaCppClient:
    global _client
    if _client is None:
        logger.info("Initializing llama.cpp client")
        model_path = os.getenv("ORAC_MODELS_PATH",
                               os.path.join(os.path.dirname(os.path.dirname(__file__)), "models/gguf"))
        _client = LlamaCppClient(model_path=model_path)
    return _client


def get_topic_manager() -> TopicManager:
    global _topic_manager
    if _topic_manager is None:
        _topic_manager = TopicManager()
    return _topic_manager


def get_backend_manager() -> BackendManager:
    global _backend_manager
    if _backend_manager is None:
        _backend_manager = BackendManager()
    return _backend_manager


def get_backend_grammar_generator() -> BackendGrammarGenerator:
    global _backend_grammar_generator
    if _backend_grammar_generator is None:
        _backend_grammar_generator = BackendGrammarGenerator(get_backend_manager())
    return _backend_grammar_generator


def get_last_command_storage():
    return _last_command_storage


async def cleanup_dependencies():
    global _client
    if _client:
        try:
            logger.info("Cleaning up llama.cpp client")
            await _client.cleanup()
        except Exception as e:
            logger.error(f"Error cleaning up client: {e}")
