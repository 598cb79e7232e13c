"""``orac`` as installed with oracd: thin re-exports so standalone code can use ORAC's import paths.

``from orac.llama_cpp_client import LlamaCppClient`` and ``from orac.models import
PromptResponse`` work after ``pip install``.  The real code is in ``oracd_client``.
Inside the ORAC app its own ``orac`` package shadows this one.
"""
