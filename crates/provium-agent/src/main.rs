//! Provium guest agent.

fn main() {}
