//! Sans-IO codecs: bytes in, frames out. Nothing in `protocol/` knows about sockets or mio.
pub mod native;
pub mod sniff;
pub mod subscribe_options;
mod tlv;
pub mod topic;
pub mod topic_options;
