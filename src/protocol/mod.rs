//! Sans-IO codecs: bytes in, frames out. Nothing in `protocol/` knows about sockets or mio.
pub mod glob;
pub mod http;
pub mod native;
pub mod payload;
pub mod resp;
pub mod resp_channel;
pub mod resp_commands;
pub mod sniff;
pub mod subscribe_options;
mod tlv;
pub mod topic;
pub mod topic_options;
pub mod websocket;
pub mod ws_fastapi;
pub mod ws_fiber;
pub mod ws_json;
