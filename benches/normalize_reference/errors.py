"""The errors the reference raises: the extension's own classes, coded as the extension codes
them, and the per-event rejection."""

from __future__ import annotations

from analytics.normalize import ERROR_STATUS, NormalizeError, SignatureError


def body_error(code: str, message: str) -> NormalizeError:
    # The extension's classes do not set ``code`` (nor ``status``) when built from Python,
    # so set them here.
    error = NormalizeError(code, message)
    error.code = code
    error.status = ERROR_STATUS[code]
    return error


def signature_error(code: str, message: str) -> SignatureError:
    error = SignatureError(code, message)
    error.code = code
    error.status = ERROR_STATUS[code]
    return error


class Reject(Exception):
    """Rejects one event with a README code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


__all__ = ["NormalizeError", "Reject", "SignatureError", "body_error", "signature_error"]
