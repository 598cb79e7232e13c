"""Command generation, modelled on ORAC HEAD's orac/services/generation_service.py: the topic's settings,
the backend's grammar file, the raw prompt ending in ``Assistant: {"device":"``, and the client call by
keyword with ``json_mode`` and ``grammar_file``.  (No STT cache, no backend dispatch: they never reach the
client.)"""
import os
import re
from datetime import datetime
from typing import Dict, List, Optional

from orac.api import HTTPException
from orac.config import NetworkConfig, load_model_configs
from orac.logger import get_logger
from orac.models import GenerationRequest, GenerationResponse

logger = get_logger(__name__)

WAKE_WORDS = ["computer", "hey computer", "ok computer", "orac", "hey orac"]
JSON_ONLY = ("You must respond with valid JSON only. Do not include any explanations, thinking, or commentary "
             "outside the JSON structure. Your response should be clean, properly formatted JSON that directly "
             "answers the request.")


class GenerationService:
    def __init__(self, client, topic_manager, backend_manager, backend_grammar_generator, last_command_storage):
        self.client = client
        self.topic_manager = topic_manager
        self.backend_manager = backend_manager
        self.backend_grammar_generator = backend_grammar_generator
        self.last_command_storage = last_command_storage
        self.last_prompt_response = None        # for the tests: what the client returned

    async def generate_text(self, request: GenerationRequest, topic_id: str = "general") -> GenerationResponse:
        start_time = datetime.now()
        topic = self.topic_manager.get_topic(topic_id) or self.topic_manager.auto_discover_topic(topic_id)
        if not topic.enabled:
            raise HTTPException(status_code=403, detail=f"Topic '{topic_id}' is disabled")
        model_to_use = request.model or topic.model
        model_config = load_model_configs().get("models", {}).get(model_to_use, {})
        temperature = request.temperature if request.temperature is not None else topic.settings.temperature
        top_p = request.top_p if request.top_p is not None else topic.settings.top_p
        top_k = request.top_k if request.top_k is not None else topic.settings.top_k
        max_tokens = request.max_tokens if request.max_tokens is not None else topic.settings.max_tokens
        json_mode = request.json_mode if request.json_mode is not None else topic.settings.force_json
        try:
            grammar_file = self._resolve_grammar_file(request, topic, topic_id)
            formatted_prompt = self._format_prompt(request, topic, model_config, grammar_file)
            response = await self.client.generate(
                model=model_to_use,
                prompt=formatted_prompt,
                stream=request.stream,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_tokens=max_tokens,
                timeout=NetworkConfig.DEFAULT_TIMEOUT,
                json_mode=json_mode,
                grammar_file=grammar_file
            )
            self.last_prompt_response = response
            response_text = self._post_process_response(response.text, grammar_file)
        except HTTPException:
            raise
        except Exception as e:
            logger.error(f"Error generating text: {e}")
            if "timed out" in str(e):
                raise HTTPException(status_code=504, detail="Generation timed out")
            raise HTTPException(status_code=500, detail=str(e))
        elapsed_ms = (datetime.now() - start_time).total_seconds() * 1000
        return GenerationResponse(status="success", response=response_text, elapsed_ms=elapsed_ms,
                                  model=model_to_use)

    def _resolve_grammar_file(self, request: GenerationRequest, topic, topic_id: str) -> Optional[str]:
        grammar_file = request.grammar_file
        if not grammar_file and topic.backend_id:
            backend = self.backend_manager.get_backend(topic.backend_id)
            if not backend:
                raise HTTPException(status_code=404, detail=f"Linked backend '{topic.backend_id}' not found")
            grammar_path = self.backend_grammar_generator.get_grammar_file_path(topic.backend_id)
            if not grammar_path.exists():
                result = self.backend_grammar_generator.generate_and_save_grammar(topic.backend_id)
                if not result["success"]:
                    raise HTTPException(status_code=500, detail=result["error"])
            grammar_file = str(grammar_path)
        elif not grammar_file and topic.grammar.enabled and topic.grammar.file:
            path = os.path.join(os.getenv("DATA_DIR", ""), "grammars", topic.grammar.file)
            if os.path.exists(path):
                grammar_file = path
        if grammar_file and not os.path.exists(grammar_file):
            grammar_file = None
        return grammar_file

    @staticmethod
    def _options(content: str, rule: str) -> List[str]:
        m = re.search(rule + r"\s*::=\s*(.+?)(?:\n|$)", content)
        return [x for x in re.findall(r'"([^"]+)"', m.group(1)) if x != "UNKNOWN"] if m else []

    def _parse_grammar_options(self, grammar_file: str) -> Dict[str, list]:
        with open(grammar_file) as f:
            content = f.read()
        return {"devices": self._options(content, "device"), "locations": self._options(content, "location"),
                "actions": self._options(content, "action")}

    def _strip_wake_word(self, prompt: str) -> str:
        lower, original = prompt.lower().strip(), prompt.strip()
        for wake_word in WAKE_WORDS:
            if lower.startswith(wake_word):
                stripped = original[len(wake_word):].lstrip(" ,.:;!?")
                if stripped:
                    return stripped
        return original

    def _format_prompt(self, request: GenerationRequest, topic, model_config: Dict, grammar_file: Optional[str]) -> str:
        user_prompt = self._strip_wake_word(request.prompt)
        if grammar_file and os.path.exists(grammar_file):
            options = self._parse_grammar_options(grammar_file)
            devices, locations = options["devices"], options["locations"]
            prefix = topic.settings.system_prompt.strip() if topic.settings.system_prompt else ""
            if not prefix:
                prefix = "/no_think Match input to JSON."
            if devices or locations:
                hint = (f"Devices: [{', '.join(devices) if devices else 'UNKNOWN'}]. "
                        f"Locations: [{', '.join(locations) if locations else 'UNKNOWN'}]. Use UNKNOWN if no match.")
            else:
                hint = "Output JSON with device, action, location. Use UNKNOWN if unclear."
            return f"{prefix} {hint}\n\nUser: {user_prompt}\nAssistant: {{\"device\":\""
        template = model_config.get("prompt_format", {}).get("template", "{system_prompt}\n\n{user_prompt}")
        if request.json_mode:
            system_prompt = JSON_ONLY
        else:
            system_prompt = (request.system_prompt or topic.settings.system_prompt
                             or model_config.get("system_prompt", ""))
        if topic.settings.no_think and not system_prompt.startswith("/no_think"):
            system_prompt = "/no_think\n\n" + system_prompt
        return template.format(system_prompt=system_prompt, user_prompt=user_prompt)

    def _post_process_response(self, response_text: str, grammar_file: Optional[str]) -> str:
        if grammar_file and os.path.exists(grammar_file) and not response_text.strip().endswith("}"):
            m = re.search(r"\{.*\}", response_text, re.DOTALL)
            if m:
                return m.group()
            response_text = response_text.strip()
            if not response_text.endswith('"'):
                response_text += '"'
            if not response_text.endswith("}"):
                response_text += "}"
        return response_text

