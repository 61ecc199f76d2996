"""The wire: every topic and every message, in one place, versioned.

- :mod:`~edgeci_mqtt.wire.topics`: the topic tree, built and parsed from one set of
  declarations, which also generate the broker's ACL;
- :mod:`~edgeci_mqtt.wire.tensors`: tensors as ``{dtype, shape, data}`` (NumPy, no torch);
- :mod:`~edgeci_mqtt.wire.compression`: feature maps as a zero bitmap and packed values, when it pays;
- :mod:`~edgeci_mqtt.wire.values` and :mod:`~edgeci_mqtt.wire.messages`: typed messages,
  validated once in :func:`decode`;
- :mod:`~edgeci_mqtt.wire.framing`: payloads over one frame travel as chunks.
"""

from __future__ import annotations

from edgeci_mqtt.wire.compression import CODECS, PackedArray, choose_codec
from edgeci_mqtt.wire.framing import BROKER_MAX_PACKET_BYTES, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, Reassembler, frames
from edgeci_mqtt.wire.messages import (
    CONTENT_TYPE,
    MAX_INPUT_SIDE,
    AuctionCall,
    Award,
    AwardRun,
    BidMessage,
    Chunk,
    DeviceState,
    InferRequest,
    InferResponse,
    Message,
    ProgramMessage,
    ProgramStep,
    ReleaseMessage,
    ResultMessage,
    RowsMessage,
    StepInput,
    StepSend,
    TaskMessage,
    TaskTimings,
    WeightsMessage,
    decode,
    encode,
)
from edgeci_mqtt.wire.tensors import decode_array, encode_array
from edgeci_mqtt.wire.topics import (
    AUCTION_AWARD,
    AUCTION_BIDS,
    AUCTION_CALL,
    CLIENT_RESPONSES,
    DEVICE_PROBE,
    DEVICE_ROWS,
    DEVICE_STATE,
    DEVICE_TASKS,
    EVERYTHING,
    INFER_REQUESTS,
    RESULTS,
    ROOT,
    SCHEMA_VERSION,
    SHARED_REQUESTS,
    TopicPattern,
)

__all__ = [
    "AUCTION_AWARD",
    "AUCTION_BIDS",
    "AUCTION_CALL",
    "BROKER_MAX_PACKET_BYTES",
    "CLIENT_RESPONSES",
    "CODECS",
    "CONTENT_TYPE",
    "DEVICE_PROBE",
    "DEVICE_ROWS",
    "DEVICE_STATE",
    "DEVICE_TASKS",
    "EVERYTHING",
    "INFER_REQUESTS",
    "MAX_FRAME_BYTES",
    "MAX_INPUT_SIDE",
    "MAX_PAYLOAD_BYTES",
    "RESULTS",
    "ROOT",
    "SCHEMA_VERSION",
    "SHARED_REQUESTS",
    "AuctionCall",
    "Award",
    "AwardRun",
    "BidMessage",
    "Chunk",
    "DeviceState",
    "InferRequest",
    "InferResponse",
    "Message",
    "PackedArray",
    "ProgramMessage",
    "ProgramStep",
    "Reassembler",
    "ReleaseMessage",
    "ResultMessage",
    "RowsMessage",
    "StepInput",
    "StepSend",
    "TaskMessage",
    "TaskTimings",
    "TopicPattern",
    "WeightsMessage",
    "choose_codec",
    "decode",
    "decode_array",
    "encode",
    "encode_array",
    "frames",
]
