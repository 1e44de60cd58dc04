"""WebSocket frames built once for every subscriber (RFC 6455, section 5.2).

A server's frames are never masked, so the bytes of one text frame are the same for every
connection: the hub builds them once per event and each connection that keeps up writes
them to its transport as they are. Uncompressed frames are valid on a connection that
negotiated permessage-deflate too (RFC 7692, section 6: compression is per message)."""
from __future__ import annotations

import struct

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
#: FIN and the text opcode.
_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame carrying `payload` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_TEXT, size) + payload
    if size < 65536:
        return _MEDIUM.pack(_TEXT, 126, size) + payload
    return _LONG.pack(_TEXT, 127, size) + payload
