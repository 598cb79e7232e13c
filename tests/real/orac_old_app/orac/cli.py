"""The old CLI (``python -m orac.cli generate --model M --prompt P``): prints the response after a header line."""
import argparse
import asyncio
import sys

from orac.llama_cpp_client import LlamaCppClient
from orac.logger import get_logger

logger = get_logger(__name__)


async def generate_text(model_name: str, prompt: str, stream: bool = False, verbose: bool = False):
    client = LlamaCppClient()
    try:
        response = await client.generate(model=model_name, prompt=prompt, stream=stream, temperature=0.7, top_p=0.7,
                                         top_k=40, max_tokens=512, verbose=verbose, timeout=30)
        return {"status": "success", "response": response.response, "elapsed_ms": response.elapsed_ms}
    except Exception as e:
        logger.error(f"Error generating text: {str(e)}")
        return {"status": "error", "message": str(e)}


async def main():
    parser = argparse.ArgumentParser(description="ORAC CLI")
    parser.add_argument("command", choices=["generate"])
    parser.add_argument("--model")
    parser.add_argument("--prompt")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    result = await generate_text(args.model, args.prompt, args.stream, verbose=args.verbose)
    if result["status"] == "success":
        print("\nGenerated response:")
        print(result["response"])
    else:
        print(f"Error: {result['message']}")
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
