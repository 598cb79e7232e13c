"""The app's configuration: constants and the data-dir loaders ORAC's client and lifecycle call."""
import json
import os

import yaml


class ModelConfig:
    DEFAULT_TEMPERATURE = 0.7
    GRAMMAR_TEMPERATURE = 0.1
    GRAMMAR_TOP_P = 0.9
    GRAMMAR_TOP_K = 10


class NetworkConfig:
    DEFAULT_TIMEOUT = 30


class CacheConfig:
    ERROR_CORRECTION_PHRASES = ["computer error", "that was wrong", "wrong command", "undo that"]


def data_dir() -> str:
    return os.getenv("DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "data"))


def load_model_configs():
    with open(os.path.join(data_dir(), "model_configs.yaml")) as f:
        return yaml.safe_load(f)


def load_favorites():
    with open(os.path.join(data_dir(), "favorites.json")) as f:
        return json.load(f)
