"""The old API's generation: it formats the model's chat template itself, then calls generate(model, prompt)."""
from orac.config import load_model_configs
from orac.llama_cpp_client import LlamaCppClient
from orac.models import GenerationRequest

_client = None


async def get_client() -> LlamaCppClient:
    global _client
    if _client is None:
        _client = LlamaCppClient()
    return _client


async def generate_text(request: GenerationRequest):
    model_config = load_model_configs().get("models", {}).get(request.model, {})
    template = model_config.get("prompt_format", {}).get("template", "{system_prompt}\n\n{user_prompt}")
    formatted_prompt = template.format(system_prompt=request.system_prompt or "", user_prompt=request.prompt)
    client = await get_client()
    response = await client.generate(model=request.model, prompt=formatted_prompt, stream=request.stream,
                                     temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
                                     max_tokens=request.max_tokens, timeout=30)
    return formatted_prompt, response
