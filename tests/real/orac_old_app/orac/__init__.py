"""A stand-in for the old ORAC app (commit 35c7904), for tests: its logging, its CLI, its API's prompt formatting.

Its ``orac/llama_cpp_client.py`` is the re-export from the README ("Migrating from the
old client"); the rest is modelled on the old app's call patterns.  Not ORAC's code.
"""
