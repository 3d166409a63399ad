//! Wire protocol between the Provium host and its guest agent.
