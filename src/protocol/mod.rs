//! Sans-IO codecs: bytes in, frames out. Nothing in `protocol/` knows about sockets or mio.
pub mod glob;
pub mod native;
pub mod resp;
pub mod resp_channel;
pub mod resp_commands;
pub mod subscribe_options;
mod tlv;
pub mod topic;
pub mod topic_options;
