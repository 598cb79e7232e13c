"""The old API's generate path once, printing the formatted prompt and what the client returned (one JSON line)."""
import asyncio
import json
import sys

from orac.api import generate_text
from orac.models import GenerationRequest


async def main():
    formatted, r = await generate_text(GenerationRequest(model=sys.argv[1], prompt=sys.argv[2],
                                                         system_prompt=sys.argv[3], max_tokens=8, temperature=0.0))
    print(json.dumps({"formatted": formatted, "response": r.response, "usage": r.usage, "prompt": r.prompt,
                      "class": type(r).__module__}))


asyncio.run(main())
