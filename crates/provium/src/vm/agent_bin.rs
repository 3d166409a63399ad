//! The guest agent binary, built static and embedded in the host.
