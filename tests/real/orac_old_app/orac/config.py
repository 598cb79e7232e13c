"""The old app's model configurations (data/model_configs.yaml: the prompt_format template per model)."""
import os

import yaml


def load_model_configs():
    path = os.path.join(os.environ.get("DATA_DIR", "data"), "model_configs.yaml")
    with open(path) as f:
        return yaml.safe_load(f)
