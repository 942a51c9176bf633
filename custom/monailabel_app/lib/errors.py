"""One-line HTTP answers for a client's mistakes: ``4xx`` with a ``detail`` that names the image,
model, strategy or file and says what to do, never a ``500``.

MONAI Label's endpoints turn any exception of the app into ``500 Internal Server Error`` (the
message only in the server log); FastAPI answers an ``HTTPException`` raised anywhere below an
endpoint with its status and ``{"detail": ...}``, so the app raises these where it checks a request.
"""

from __future__ import annotations

NOT_FOUND = 404  # no such model, strategy or image
CONFLICT = 409  # the request is fine but the server's state refuses it (no trained model yet, all frames reserved)
UNPROCESSABLE = 422  # a file that cannot be used (image, label)


def http_error(status: int, detail: str):
    """An ``HTTPException`` with a one-line ``detail``."""
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=" ".join(str(detail).split()))


# MONAI Label's own answer to an inference request with no image (raised as a 500 in its endpoint)
_NO_INFER_INPUT = "Neither Image nor File not Session ID input is provided"


def install_exception_handlers() -> bool:
    """Answer the mistakes MONAI Label's own endpoints raise before the app sees the request
    with a one-line 4xx (``app.add_exception_handler`` on MONAI Label's FastAPI app):

    * ``MONAILabelException`` with ``INVALID_INPUT``: 422; ``ImageNotFoundException`` /
      ``LabelNotFoundException``: 404 (any other: a 500 with its one-line message);
    * ``POST /infer/<model>`` with neither ``image`` nor a file (MONAI Label: 500): 422.

    Called when the app starts in the server (``on_init_complete``); returns whether it ran there.
    """
    import sys

    api = getattr(sys.modules.get("monailabel.app"), "app", None)
    if api is None:
        return False
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse
    from monailabel.interfaces.exception import (
        ImageNotFoundException,
        LabelNotFoundException,
        MONAILabelError,
        MONAILabelException,
    )
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def monailabel_error(request, exc):
        if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
            status = NOT_FOUND
        elif getattr(exc, "error", None) == MONAILabelError.INVALID_INPUT:
            status = UNPROCESSABLE
        else:
            status = 500
        return JSONResponse(status_code=status, content={"detail": " ".join(str(getattr(exc, "msg", exc)).split())})

    async def http_error(request, exc):
        if exc.status_code == 500 and exc.detail == _NO_INFER_INPUT:
            exc = StarletteHTTPException(
                UNPROCESSABLE,
                "inference needs an image: ?image=ID (GET /datastore/?output=all lists the ids) or an uploaded file",
            )
        return await http_exception_handler(request, exc)

    api.add_exception_handler(MONAILabelException, monailabel_error)
    api.add_exception_handler(StarletteHTTPException, http_error)
    # Starlette builds its middleware stack (with the handlers) on the first call, the startup's
    # lifespan; the next request builds it again with these
    api.middleware_stack = None
    return True
