"""Topics (the fields ORAC's generation service reads), kept in DATA_DIR/topics.json."""
import json
import os
from typing import Dict, Optional

from pydantic import BaseModel, Field

from orac.config import data_dir


class TopicSettings(BaseModel):
    system_prompt: str = "You are a helpful AI assistant."
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    max_tokens: int = 500
    no_think: bool = False
    force_json: bool = False


class GrammarConfig(BaseModel):
    enabled: bool = False
    file: Optional[str] = None


class Topic(BaseModel):
    name: str
    enabled: bool = True
    model: str
    settings: TopicSettings = Field(default_factory=TopicSettings)
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    backend_id: Optional[str] = None


class TopicManager:
    def __init__(self):
        with open(os.path.join(data_dir(), "topics.json")) as f:
            self.topics: Dict[str, Topic] = {k: Topic(**v) for k, v in json.load(f).items()}

    def get_topic(self, topic_id: str) -> Optional[Topic]:
        return self.topics.get(topic_id)

    def auto_discover_topic(self, topic_id: str) -> Topic:
        self.topics[topic_id] = Topic(name=topic_id, model=self.topics["general"].model)
        return self.topics[topic_id]

    def mark_topic_used(self, topic_id: str) -> None:
        pass
