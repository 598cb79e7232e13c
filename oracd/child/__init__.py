"""The supervised llama-server: the owner loop (``supervisor``) and its pure decisions
(``states``, ``swap_queue``, ``backoff``, ``hang``, ``failures``), the process and its command line
(``process``, ``command``, ``pidfile``), HTTP to it (``http``), and extra servers for start_server()."""
