//! Host side of the agent channel: handshake, framed requests, channels, resync.
