"""The app's API layer (no FastAPI here: routes are the plain coroutines FastAPI would call)."""


class HTTPException(Exception):
    def __init__(self, status_code: int, detail: str = ""):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
