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

/// The longest client name a client may set, in bytes, whatever its protocol: native HELLO's
/// name (a short string, which holds no more), Redis `CLIENT SETNAME` and `HELLO ... SETNAME`,
/// the Go/Fiber dialect's `client_id` (the FastAPI dialect's id is the broker's own, 16 hex
/// digits). A name rides in every presence event and stats listing, so it must stay small
/// next to the message limit; a longer one is refused in the protocol's own error format.
pub const CLIENT_NAME_BYTES_MAX: usize = u8::MAX as usize;
