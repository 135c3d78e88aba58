"""HSM error statuses: every answer carries one, like a payShield host command's error code."""

from __future__ import annotations

OK = "00"
VERIFICATION_FAILED = "01"
UNKNOWN_KEY = "10"
KEY_TYPE_NOT_ALLOWED = "11"
KEY_ALGORITHM_MISMATCH = "12"
MODE_NOT_ALLOWED = "13"
INVALID_INPUT = "15"
NOT_PERMITTED = "17"
PIN_BLOCK_ERROR = "20"
INVALID_PIN = "23"
EXPORT_REFUSED = "27"
KEY_STORE_ERROR = "40"
INTERNAL_ERROR = "41"
UNKNOWN_COMMAND = "68"
FRAME_ERROR = "80"
TIMEOUT = "90"
CONNECTION_ERROR = "91"

STATUS_MEANINGS: dict[str, str] = {
    OK: "no error",
    VERIFICATION_FAILED: "verification failed (wrong PIN, CVV, cryptogram or MAC)",
    UNKNOWN_KEY: "no key with this KCV in the key store",
    KEY_TYPE_NOT_ALLOWED: "key type not allowed for this command",
    KEY_ALGORITHM_MISMATCH: "key algorithm or length not usable for this command",
    MODE_NOT_ALLOWED: "the key's mode of use does not allow this operation",
    INVALID_INPUT: "invalid input data (length, hex, digits)",
    NOT_PERMITTED: "refused: the client is not authenticated, revoked, or its role may not run this command",
    PIN_BLOCK_ERROR: "PIN block format error or PIN block does not decipher",
    INVALID_PIN: "PIN length or digits invalid",
    EXPORT_REFUSED: "key may not be exported or imported this way (exportability, protecting key, origin)",
    KEY_STORE_ERROR: "key store cannot be read or written",
    INTERNAL_ERROR: "internal error",
    UNKNOWN_COMMAND: "unknown command code",
    FRAME_ERROR: "frame truncated, oversized or not a command",
    TIMEOUT: "no answer from the HSM in time (client side)",
    CONNECTION_ERROR: "connection to the HSM lost (client side)",
}


class HsmError(Exception):
    """A refused command: `code` is the 2-digit status, the message names the command and the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} (HSM status {code})")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (self.__class__, (self.code, self.message))
