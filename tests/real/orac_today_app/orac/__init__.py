"""A stand-in for today's ORAC app (ORAC HEAD 61f263a), for tests: the same calls, made the same way.

Its ``orac/llama_cpp_client.py`` is the short re-export that replaces ORAC's own
client (README, "Today's ORAC"); everything else here is modelled on ORAC's call
patterns (generation service, lifecycle, routes, backend manager), trimmed to
what reaches the client.  Not ORAC's code.
"""
