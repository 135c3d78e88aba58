"""The host interface: ISO 8583:1987 messages (`SPEC`), framing, typed views, response codes, DE 55 TLV.

The 2-byte length framing is the HSM protocol's too; its one home is hsm_sim.framing (part of the client API).
"""

from hsm_sim.framing import FrameDecoder, FrameError, FrameTimeout, FrameTooLarge, IncompleteFrame, encode_frame, read_frame

from . import response_codes as rc
from .codec import MessageFormatError, decode, encode, encode_de48, parse_de48
from .messages import (
    Balance,
    BatchTotals,
    OriginalData,
    Reconciliation,
    Request,
    Track2,
    build_response,
    build_track2,
    chip_service_code,
    encode_net_amount,
    parse_net_amount,
    parse_track2,
    response_mti,
)
from .spec import SPEC
from .tlv import TlvError, decode_tlv, encode_tlv

__all__ = [
    "SPEC", "Balance", "BatchTotals", "FrameDecoder", "FrameError", "FrameTimeout", "FrameTooLarge", "IncompleteFrame",
    "MessageFormatError", "OriginalData", "Reconciliation", "Request", "TlvError", "Track2",
    "build_response", "build_track2", "chip_service_code", "decode", "decode_tlv", "encode", "encode_de48", "encode_frame", "encode_net_amount",
    "encode_tlv", "parse_de48", "parse_net_amount", "parse_track2", "rc", "read_frame", "response_mti",
]
