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
