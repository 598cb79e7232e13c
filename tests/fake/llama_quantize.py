"""A scripted stand-in for llama-quantize, so the fake layer needs no llama.cpp: oracd's quantize policy (caps,
one at a time, models in use, temp files) is what the fake tests check; real/test_quantize.py runs the real one.

``--help`` lists a few types the way llama-quantize does; ``IN OUT TYPE`` prints one progress line per
"tensor" and writes OUT at the size a q4_0 of a tiny F32 model has (one sixth of IN, as the real one does
within a few kB), in chunks, so RLIMIT_FSIZE stops it like a full disk."""
from __future__ import annotations

import os
import sys

HELP = """usage: llama-quantize [--help] model-f32.gguf [model-quant.gguf] type [nthreads]

Allowed quantization types:
   2  or  Q4_0    :  4.34G, +0.4685 ppl @ Llama-3-8B
   3  or  Q4_1    :  4.78G, +0.4511 ppl @ Llama-3-8B
   7  or  Q8_0    :  7.96G, +0.0026 ppl @ Llama-3-8B
  15  or  Q4_K    : alias for Q4_K_M
"""


def main(argv: list) -> int:
    if not argv or argv[0] == "--help":
        print(HELP)
        return 0 if argv else 1
    src, dst, qtype = argv[:3]
    try:
        size = os.path.getsize(src)
    except OSError as exc:
        print(f"llama_model_quantize: failed to quantize: {exc}", flush=True)
        return 1
    tensors = 12
    with open(dst, "wb") as out:
        out.write(b"GGUF")
        for i in range(1, tensors + 1):
            print(f"[{i:4d}/{tensors:4d}] blk.0.t{i}.weight - converting to {qtype.lower()}", flush=True)
            out.write(b"\0" * (size // 6 // tensors))
    print("llama_quantize: quantize time =     1.00 ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
