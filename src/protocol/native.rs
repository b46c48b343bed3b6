//! The native binary protocol, versions 1 to 4, as a sans-IO codec.
//!
//! The reactors own the sockets and buffers; this module only turns bytes into [`Frame`]s and
//! frames into bytes. Keeping it free of I/O lets the wire format be pinned byte by byte in
//! tests, fuzzed without a socket, and reused by clients and benchmarks. Decoding borrows from
//! the read buffer, so a PUBLISH is never copied before the broker decides where it goes, and
//! the MSG layout lets the fan-out path build one frame per message and patch only a few header
//! bytes per subscriber (see [`encode_msg_from_publish`]).
//!
//! This documentation is the protocol specification.
//!
//! # Conventions
//!
//! - Every integer is unsigned and big-endian.
//! - A *short string* is a `u8` length followed by that many bytes, so it holds 0 to 255 bytes.
//! - Names, topics and messages are meant to be UTF-8, but the codec does not check it; topic
//!   rules (allowed characters, patterns, whether an empty topic is valid) are enforced by the
//!   broker, not by this layer.
//! - The codec decodes both directions so that clients can use it too; rejecting a frame sent in
//!   the wrong direction is the receiver's job.
//!
//! # Frame header
//!
//! Every frame is a 12-byte header followed by a body whose layout depends on the opcode.
//!
//! | Offset | Size | Field      | Meaning                                                               |
//! |-------:|-----:|------------|-----------------------------------------------------------------------|
//! | 0      | 4    | `length`   | bytes *after* this field: `8 + body length`, so at least 8            |
//! | 4      | 1    | `opcode`   | see [Opcodes](#opcodes)                                               |
//! | 5      | 1    | `flags`    | per-opcode bits; every bit not defined for the opcode must be 0       |
//! | 6      | 2    | `reserved` | must be 0                                                             |
//! | 8      | 4    | `id`       | request id, subscription id, or 0 (see [Opcodes](#opcodes))           |
//! | 12     | `length - 8` | body | see [Bodies](#bodies)                                     |
//!
//! The whole frame therefore occupies `4 + length` bytes. A receiver bounds that total (header
//! included) by its frame limit; the broker derives the limit as `message_bytes_max +`
//! [`FRAME_OVERHEAD_MAX`], which leaves room for the largest topic and reply topic.
//!
//! # Opcodes
//!
//! The high bit gives the direction: `0x00..=0x7F` travel client → server, `0x80..=0xFF`
//! server → client.
//!
//! | Opcode | Name          | Direction | `id`                                         | Flags           |
//! |-------:|---------------|-----------|----------------------------------------------|-----------------|
//! | `0x01` | `HELLO`       | C → S     | request id                                   | none            |
//! | `0x02` | `PUBLISH`     | C → S     | request id                                   | `PUBLISH_QUIET` |
//! | `0x03` | `SUBSCRIBE`   | C → S     | request id                                   | none            |
//! | `0x04` | `UNSUBSCRIBE` | C → S     | request id                                   | none            |
//! | `0x05` | `PING`        | C → S     | request id                                   | none            |
//! | `0x06` | `ACK` (v2)    | C → S     | request id                                   | `ACK_CUMULATIVE`, `ACK_NACK` |
//! | `0x07` | `CREATE_TOPIC` (v3) | C → S | request id                                 | none            |
//! | `0x08` | `DELETE_TOPIC` (v3) | C → S | request id                                 | none            |
//! | `0x09` | `STATS` (v4)  | C → S     | request id                                   | none            |
//! | `0x80` | `OK`          | S → C     | id of the request it answers                 | none            |
//! | `0x81` | `ERR`         | S → C     | id of the failed request, 0 if connection-level | none         |
//! | `0x82` | `MSG`         | S → C     | subscription id                              | none            |
//! | `0x83` | `PONG`        | S → C     | id of the PING                               | none            |
//! | `0x84` | `DROPPED`     | S → C     | subscription id                              | none            |
//! | `0x85` | `GAP` (v2)    | S → C     | subscription id                              | none            |
//! | `0x86` | `ENDED` (v3)  | S → C     | subscription id                              | none            |
//!
//! Request ids are chosen by the client and echoed by the server; the server never interprets
//! them, so a client may reuse them as it likes.
//!
//! # Bodies
//!
//! Offsets are relative to the start of the body. `T`, `R` and `N` are the values of the
//! preceding length bytes. "Rest" means every remaining byte of the body, possibly none.
//!
//! ### HELLO (`0x01`)
//!
//! Must be the first frame on a connection.
//!
//! | Offset  | Size | Field      | Meaning                                        |
//! |--------:|-----:|------------|------------------------------------------------|
//! | 0       | 4    | `magic`    | ASCII `CBUS` (`43 42 55 53`)                   |
//! | 4       | 2    | `version`  | protocol version the client speaks (1 to 4)    |
//! | 6       | 1    | `name_len` | `N`                                            |
//! | 7       | N    | `name`     | client name for logs, may be empty             |
//!
//! Nothing may follow the name. A wrong magic decodes as `BAD_FRAME`; because it means the peer
//! does not speak this protocol at all, the broker replies ERR and closes. The codec does not
//! check `version`: the broker answers `UNSUPPORTED_VERSION` for a version it does not speak.
//! Any other well-formed frame before HELLO is answered ERR `HANDSHAKE_REQUIRED` carrying that
//! frame's `id`, and the broker closes the connection.
//!
//! ### PUBLISH (`0x02`)
//!
//! | Offset    | Size | Field       | Meaning                                      |
//! |----------:|-----:|-------------|----------------------------------------------|
//! | 0         | 1    | `topic_len` | `T`                                          |
//! | 1         | T    | `topic`     | exact topic (no pattern)                     |
//! | 1 + T     | 1    | `reply_len` | `R`; 0 means no reply topic                  |
//! | 2 + T     | R    | `reply_to`  | topic the receivers should answer on         |
//! | 2 + T + R | rest | `payload`   | opaque message, may be empty                 |
//!
//! With `PUBLISH_HEADERS` (`0x02`, v4) a header block sits between `reply_to` and `payload`:
//!
//! | Offset    | Size | Field         | Meaning                                    |
//! |----------:|-----:|---------------|--------------------------------------------|
//! | 2 + T + R | 2    | `headers_len` | `H`, bytes of the entries that follow      |
//! | 4 + T + R | H    | `headers`     | entries, in order (below)                  |
//! | 4 + T + R + H | rest | `payload` | opaque message                            |
//!
//! Each entry is `name_len: u8` (1 to 255), `name` (visible ASCII, no `:`), `value_len: u16`,
//! `value` (any bytes). Names may repeat; order is kept. An entry that runs past the block, an
//! empty name or one with other bytes is `BAD_FRAME`; a block above the broker's
//! `--header-bytes-max` is `MESSAGE_TOO_LARGE`. Headers ride with the message through replay,
//! redelivery and dead letters. Known names: `id` (the publisher's message id, shown by the
//! WebSocket dialects) and `content-type` (`application/json` makes WebSocket clients see the
//! payload as JSON). A v1 to v3 connection must not set the flag, even with an empty block
//! (`BAD_FRAME`).
//!
//! With `PUBLISH_QUIET` the broker sends no OK, but still sends ERR on failure, which lets
//! fire-and-forget publishers skip a reply per message without losing error reports.
//!
//! ### SUBSCRIBE (`0x03`)
//!
//! | Offset | Size | Field       | Meaning                                              |
//! |-------:|-----:|-------------|------------------------------------------------------|
//! | 0      | 4    | `sub_id`    | chosen by the client, unique on the connection       |
//! | 4      | 1    | `topic_len` | `T`                                                  |
//! | 5      | T    | `topic`     | exact topic or pattern                               |
//! | 5 + T  | rest | `options`   | TLV entries (v2), see below; empty in v1             |
//!
//! Options are a sequence of entries `tag: u8`, `len: u16`, `value: [u8; len]`, defined in
//! [`crate::protocol::subscribe_options`] (v2: `START`, where the subscription begins in the
//! topic's history; `CONSUMER`, `GROUP` and `ACKS`, durable consumers, groups and
//! at-least-once delivery). A connection that negotiated v1 must send none (`UNSUPPORTED_OPTION`);
//! the codec itself returns the raw bytes without parsing them.
//!
//! ### UNSUBSCRIBE (`0x04`)
//!
//! | Offset | Size | Field    | Meaning                              |
//! |-------:|-----:|----------|--------------------------------------|
//! | 0      | 4    | `sub_id` | subscription to end                  |
//!
//! The body is exactly 4 bytes.
//!
//! ### ACK (`0x06`, since v2)
//!
//! | Offset | Size | Field       | Meaning                                               |
//! |-------:|-----:|-------------|-------------------------------------------------------|
//! | 0      | 4    | `sub_id`    | a subscription made with the `ACKS` option            |
//! | 4      | 8    | `seq`       | the message's sequence number in its topic            |
//! | 12     | 1    | `topic_len` | optional (v3): `T`, absent or 0 when no topic is given |
//! | 13     | T    | `topic`     | the message's topic (MSG `topic`)                     |
//!
//! A v1 connection has no ACK: the broker answers `UNKNOWN_OPCODE`. A v2 connection must not
//! send the topic field (`BAD_FRAME`); a v3 connection may.
//!
//! The topic is required for a pattern group subscription, whose messages come from several
//! topics with independent sequence numbers; for an exact subscription it may be left out (if
//! given, it must be the subscription's topic). Acks of a pattern group are per topic: a
//! cumulative ack covers that topic's messages only.
//!
//! With no flag it acknowledges one message; `ACK_CUMULATIVE` (`0x01`) acknowledges every
//! in-flight message up to and including `seq`; `ACK_NACK` (`0x02`) asks for `seq` to be
//! redelivered at once. Both flags together are `BAD_FRAME`. Acks are answered only on failure
//! (ERR with the request id), so a consumer can ack at full speed; acking a message that is not
//! in flight (already acked, or redelivered elsewhere) is not an error.
//!
//! ### CREATE_TOPIC (`0x07`, since v3)
//!
//! | Offset | Size | Field       | Meaning                                              |
//! |-------:|-----:|-------------|------------------------------------------------------|
//! | 0      | 1    | `topic_len` | `T`                                                  |
//! | 1      | T    | `topic`     | exact topic, not reserved (`$`) nor a request/reply inbox (`_inbox.`) |
//! | 1 + T  | rest | `options`   | TLV entries, see [`crate::protocol::topic_options`]  |
//!
//! Creates the topic now, with its own replay limits where the options give them (the
//! broker's defaults otherwise). Unlike a topic created by first use, an explicitly created
//! topic is never reclaimed for being idle. Creating a topic that exists (explicitly or by
//! use) is `TOPIC_EXISTS`; a limit above the broker's cap is `OPTION_OUT_OF_RANGE`.
//!
//! ### DELETE_TOPIC (`0x08`, since v3)
//!
//! | Offset | Size | Field       | Meaning                                              |
//! |-------:|-----:|-------------|------------------------------------------------------|
//! | 0      | 1    | `topic_len` | `T`                                                  |
//! | 1      | T    | `topic`     | exact topic (reserved `$` names included), not an `_inbox.` one |
//!
//! Nothing may follow the topic. Deletes the topic with its retained messages and its durable
//! consumers and groups (their unacknowledged messages too), and ends every exact subscription
//! to it: a v3 subscriber gets ENDED (`TOPIC_DELETED`) for each, older ones an ERR with id 0.
//! The OK (empty `data`) is sent once the requester's shard has been told. A later publish or
//! subscribe creates the topic afresh, with a new epoch; its sequence numbers continue after
//! the deleted topic's last one, so an ACK in flight for the old topic cannot name a message of
//! the new one. Pattern subscriptions are not affected (nor told).
//! Deleting a topic that does not exist is `TOPIC_NOT_FOUND`.
//!
//! ### STATS (`0x09`, since v4)
//!
//! | Offset | Size | Field       | Meaning                                              |
//! |-------:|-----:|-------------|------------------------------------------------------|
//! | 0      | 1    | `topic_len` | optional: `T`; an empty body (or `T` = 0) names no topic |
//! | 1      | T    | `topic`     | an exact topic whose subscribers to list (presence)  |
//!
//! Nothing may follow the topic. Asks for the broker's stats, gathered from every shard
//! over the rings; the OK's `data` is one UTF-8 JSON object (so fields can be added without
//! a new version; clients ignore the ones they do not know):
//!
//! - `uptime_seconds`, `time_ms` (the broker's Unix time in ms), `shards` (those that
//!   answered) and `partial` (true when a shard did not answer within 500 ms and is left
//!   out);
//! - the broker-wide counters `published`, `delivered`, `dropped`, `undelivered`,
//!   `slow_consumer_disconnects`, `dead_lettered`, `acks`, `nacks`, `redelivered`,
//!   `rate_limited`, `bytes_in`, `bytes_out`, `connections`, `connections_by_protocol`;
//! - `by_shard`: the same counters for each shard (`shard`, `connections`, `topics`, ...);
//! - `topics`: by name, each with `owner_shard`, `messages` (its last sequence number),
//!   `subscribers` (exact, every shard), `retained_messages`, `retained_bytes`,
//!   `retained_first_seq` and `retained_last_seq` (0 and 0 when nothing is retained), and
//!   `consumers` (`name`, `group`, `members`, `in_flight`, `lag`: messages not yet acked, or
//!   for a consumer without acks not yet delivered);
//! - `latency`: `delivery` (publish to socket write) and `ack` (a durable consumer's
//!   delivery to its ack), each `count`, `p50_us`, `p90_us`, `p99_us`, `p999_us` and
//!   `max_us` since start, and the same per shard in `by_shard`;
//! - `slow_consumers`: connections holding more than half their outbound limit
//!   (`shard`, `connection`, `client_name`, `protocol`, `peer`, `queued_bytes`);
//! - with a topic: `subscribers`, every subscription that receives the topic's messages on
//!   any shard (`shard`, `connection`, `client_name`, `protocol`, `peer`, `sub_id`,
//!   `subject`: the topic or the pattern that matched it, `consumer` when it belongs to a
//!   durable consumer or group).
//!
//! A named topic that does not exist is `TOPIC_NOT_FOUND` (unless the answer is partial).
//! A v1 to v3 connection gets `UNKNOWN_OPCODE`; one STATS at a time per connection
//! (another while one is being gathered is `RATE_LIMITED`).
//!
//! ### PING (`0x05`) and PONG (`0x83`)
//!
//! Empty bodies. PONG carries the PING's id.
//!
//! ### OK (`0x80`)
//!
//! The whole body is `data`, whose layout depends on the command being answered:
//!
//! | Answered command             | `data`                                                    |
//! |------------------------------|-----------------------------------------------------------|
//! | HELLO                        | `version: u16`, `shard_id: u16`, `message_bytes_max: u32` (8 bytes) |
//! | PUBLISH                      | `seq: u64`, the sequence number given to the message in its topic |
//! | SUBSCRIBE of an exact topic  | `epoch: u64`, `last_seq: u64` (16 bytes)                  |
//! | SUBSCRIBE of a pattern       | empty                                                     |
//! | CREATE_TOPIC                 | `epoch: u64`, `last_seq: u64` (16 bytes; `last_seq` is 0) |
//! | UNSUBSCRIBE                  | empty                                                     |
//!
//! For HELLO, `version` is the version the broker will speak and `message_bytes_max` the
//! largest payload it accepts. For an exact SUBSCRIBE, `epoch` identifies the topic's current
//! incarnation (sequence numbers are only comparable within one epoch) and `last_seq` is the
//! sequence number of the last message published before the subscription took effect, so the
//! client can tell which messages it will and will not see.
//!
//! ### ERR (`0x81`)
//!
//! | Offset | Size | Field     | Meaning                                         |
//! |-------:|-----:|-----------|-------------------------------------------------|
//! | 0      | 2    | `code`    | see [Error codes](#error-codes)                 |
//! | 2      | rest | `message` | human-readable detail, UTF-8, may be empty      |
//!
//! `id` is the failed request's id, or 0 for a connection-level error (an unreadable frame
//! length, or `SLOW_CONSUMER` just before the broker closes the connection).
//!
//! ### MSG (`0x82`)
//!
//! `id` is the subscription id the message matched.
//!
//! | Offset     | Size | Field            | Meaning                                        |
//! |-----------:|-----:|------------------|------------------------------------------------|
//! | 0          | 8    | `seq`            | sequence number of the message in its topic    |
//! | 8          | 8    | `timestamp_ns`   | Unix time of the publish, in nanoseconds       |
//! | 16         | 2    | `delivery_count` | 1 on the first delivery                        |
//! | 18         | 1    | `topic_len`      | `T`                                            |
//! | 19         | T    | `topic`          | the exact topic published to                   |
//! | 19 + T     | 1    | `reply_len`      | `R`; 0 means no reply topic                    |
//! | 20 + T     | R    | `reply_to`       | as given by the publisher                      |
//! | 20 + T + R | rest | `payload`        | as given by the publisher                      |
//!
//! With `MSG_HEADERS` (`0x01`, v4) the header block of the PUBLISH sits between `reply_to`
//! and `payload`, exactly as in PUBLISH. A v1 to v3 connection gets every MSG without it (and
//! without the flag): the same message, minus its headers.
//!
//! From `topic_len` on, the body is byte-for-byte a PUBLISH body: the broker builds a MSG by
//! putting 18 bytes in front of what the publisher sent, i.e. a MSG frame is
//! [`MSG_PREFIX_LEN`] (30) bytes followed by the PUBLISH body.
//!
//! ### DROPPED (`0x84`)
//!
//! `id` is the subscription id.
//!
//! | Offset | Size | Field   | Meaning                                                          |
//! |-------:|-----:|---------|------------------------------------------------------------------|
//! | 0      | 8    | `count` | messages dropped for this subscription since the previous DROPPED |
//!
//! Sent under the drop-oldest slow-consumer policy. The count is per subscription because a
//! pattern subscription spans topics whose `seq`s are independent, so its gaps cannot be seen
//! in `seq` alone.
//!
//! ### GAP (`0x85`, since v2)
//!
//! `id` is the subscription id.
//!
//! | Offset | Size | Field        | Meaning                                                      |
//! |-------:|-----:|--------------|--------------------------------------------------------------|
//! | 0      | 8    | `missed`     | messages the subscription asked for that were already evicted |
//! | 8      | 8    | `resume_seq` | the sequence number delivery continues from                  |
//! | 16     | 1    | `topic_len`  | optional (v3): `T`; absent on a v2 connection               |
//! | 17     | T    | `topic`      | the topic whose messages were missed                         |
//!
//! Sent before the first replayed message when a start position reaches back past what the
//! topic retains, and to a durable consumer whose backlog was evicted before it got there, so
//! history lost to eviction is never silent. It is queued in line with the subscription's
//! messages: the subscription's next MSG on `topic` carries `resume_seq`.
//!
//! For a durable consumer or a group the gap belongs to the message at `resume_seq`: the GAP
//! goes to the subscription that gets that message, directly before it, and again before every
//! redelivery of it (after a reconnect, an ack timeout, a nack, or to another group member
//! when its holder left), until that message is acknowledged. So a consumer with ACKS that
//! dies before reading a GAP is told again when it resumes, and in a group exactly the member
//! that gets `resume_seq` hears of the gap; `missed` counts the messages numbered before
//! `resume_seq` that no member of the group received. Without ACKS nothing is redelivered, and
//! a GAP lost with its connection is lost like the messages queued with it (at most once). A
//! message dead-lettered takes its gap with it.
//!
//! On a v3 (or later) connection the broker always names the topic, which a pattern group
//! needs (its topics number their messages apart); v2 connections get the 16-byte body they
//! were specified with.
//!
//! # Flags
//!
//! | Opcode  | Bit    | Name            | Meaning                                  |
//! |---------|--------|-----------------|------------------------------------------|
//! | PUBLISH | `0x01` | `PUBLISH_QUIET` | no OK reply; ERR is still sent           |
//! | PUBLISH | `0x02` | `PUBLISH_HEADERS` (v4) | a header block follows `reply_to` |
//! | MSG     | `0x01` | `MSG_HEADERS` (v4) | a header block follows `reply_to`     |
//!
//! Every other bit of every opcode is reserved and must be 0; a frame with an undefined bit set
//! is rejected with `BAD_FRAME` rather than ignored, so that a future meaning is never silently
//! dropped by an older receiver.
//!
//! # Malformed input
//!
//! - A `length` below 8 or a total frame size (`4 + length`) above the receiver's limit cannot
//!   be skipped safely: the broker replies ERR with id 0 (`BAD_FRAME` or `FRAME_TOO_LARGE`) and
//!   closes. The limit is checked as soon as the first 4 bytes arrive, so an oversized frame is
//!   never buffered.
//! - Any other problem (unknown opcode, undefined flag, non-zero `reserved`, bad magic, a body
//!   that does not match its opcode's layout) leaves the frame boundary intact: the broker
//!   replies ERR with the frame's id (`UNKNOWN_OPCODE` or `BAD_FRAME`), skips the frame and
//!   carries on — except for HELLO, where any failure closes the connection.
//!
//! ### ENDED (`0x86`, since v3)
//!
//! `id` is the subscription id. The body is laid out like ERR's: `code: u16`, then a
//! human-readable `message`. The broker ended the subscription (so far only because its topic
//! was deleted: `TOPIC_DELETED`). It comes after the messages already queued for the
//! subscription and nothing for it follows, so its id is free again.
//!
//! # Error codes
//!
//! | Code | Name                     | Meaning                                                        |
//! |-----:|--------------------------|----------------------------------------------------------------|
//! | 1    | `BAD_FRAME`              | the frame does not match its opcode's layout                   |
//! | 2    | `FRAME_TOO_LARGE`        | the frame is above the broker's limit                          |
//! | 3    | `UNKNOWN_OPCODE`         | the opcode is not one this version knows                       |
//! | 4    | `BAD_TOPIC`              | a topic or pattern breaks the naming rules                     |
//! | 5    | `HANDSHAKE_REQUIRED`     | a command arrived before HELLO                                 |
//! | 6    | `UNSUPPORTED_VERSION`    | the broker does not speak the HELLO's version                  |
//! | 7    | `SLOW_CONSUMER`          | the client could not keep up and is being disconnected         |
//! | 8    | `TOO_MANY_SUBSCRIPTIONS` | the connection is at its subscription limit                    |
//! | 9    | `TOO_MANY_CONNECTIONS`   | the broker is at its connection limit                          |
//! | 10   | `TOO_MANY_TOPICS`        | the broker is at its topic limit                               |
//! | 11   | `UNKNOWN_SUBSCRIPTION`   | UNSUBSCRIBE named a subscription id the connection lacks       |
//! | 12   | `DUPLICATE_SUBSCRIPTION` | SUBSCRIBE reused a subscription id the connection holds        |
//! | 13   | `SHUTTING_DOWN`          | the broker is shutting down and takes no new work              |
//! | 14   | `INTERNAL`               | a broker bug; the message says more                            |
//! | 15   | `TOPIC_NOT_FOUND`        | the topic does not exist and auto-creation is off              |
//! | 16   | `RATE_LIMITED`           | the connection is over its publish rate                        |
//! | 17   | `UNSUPPORTED_OPTION`     | a SUBSCRIBE or CREATE_TOPIC option this broker does not support |
//! | 18   | `MESSAGE_TOO_LARGE`      | the payload is above `message_bytes_max`                       |
//! | 19   | `CONSUMER_IN_USE`        | another subscription is attached to that durable consumer, or it exists with other settings |
//! | 20   | `TOO_MANY_CONSUMERS`     | the broker is at its durable consumer and group limit          |
//! | 21   | `TOPIC_EXISTS`           | CREATE_TOPIC named a topic that already exists                 |
//! | 22   | `OPTION_OUT_OF_RANGE`    | an option's value is above the broker's cap for it             |
//! | 23   | `TOPIC_DELETED`          | the subscription's topic was deleted (ENDED)                   |
//! | 24   | `START_BEYOND_END`       | a START sequence number is beyond the topic's next one; the message names the epoch and last seq |
//! | 25   | `EPOCH_MISMATCH`         | a START's EPOCH (v4) is not the topic's epoch: that history is gone; the message names the epoch and last seq |
//! | 26   | `FRAME_TIMEOUT`          | a frame that had started did not complete within `--frame-deadline-ms`; the connection is closed |
//!
//! A code's number and meaning never change. Clients must treat a code they do not know as a
//! generic failure of the request, since later brokers may add codes.
//!
//! # Versioning and extension
//!
//! - The version is negotiated once, by HELLO; its OK names the version the broker will speak.
//! - The header never changes. New features arrive as new opcodes, new flag bits, new SUBSCRIBE
//!   options or new error codes, each tied to a new protocol version: a client must not use
//!   them unless the broker's HELLO reply announced that version.
//! - Because every frame is length-prefixed, an unknown opcode is answered with
//!   `UNKNOWN_OPCODE` and skipped; the connection survives. So is an opcode the connection's
//!   version does not have (ACK on v1, CREATE_TOPIC and DELETE_TOPIC before v3, STATS
//!   before v4), and a
//!   server → client opcode sent by a client; the ERR carries the frame's `id`.
//! - Later versions may append fields to the end of an OK `data`; clients must ignore bytes
//!   beyond the fields they know.
//! - SUBSCRIBE options are TLV-encoded so a receiver can find each entry's end without knowing
//!   its tag.
//!
//! # Example
//!
//! A PUBLISH with request id 2 to topic `t.a`, no reply topic and payload `hi`:
//!
//! ```text
//! 00 00 00 0f   02       00     00 00      00 00 00 02   03 74 2e 61   00         68 69
//! length = 15   PUBLISH  flags  reserved   id = 2        topic "t.a"   no reply   payload "hi"
//! ```

use std::mem::MaybeUninit;

use crate::error::ErrorCode;

/// The newest version this codec's layouts describe; what the broker offers.
///
/// - v2: SUBSCRIBE options (start, durable consumers, groups, ACKS), ACK, GAP.
/// - v3: CREATE_TOPIC, DELETE_TOPIC, ENDED, acked pattern groups, the topic in ACK and GAP.
/// - v4: the SUBSCRIBE option `EPOCH`, so a resume from another epoch is refused; message
///   headers in PUBLISH and MSG; STATS.
pub const PROTOCOL_VERSION: u16 = 4;
/// The oldest version the broker still speaks: v1 clients keep working (they cannot send
/// SUBSCRIBE options, and never receive GAP); v2 clients get 16-byte GAP bodies.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// First four bytes of a HELLO body; lets the broker reject a peer speaking another protocol.
pub const MAGIC: [u8; 4] = *b"CBUS";
/// Size of the fixed frame header, length field included.
pub const HEADER_LEN: usize = 12;
/// Bytes of a MSG frame before the PUBLISH-identical suffix: header + seq + timestamp +
/// delivery_count.
pub const MSG_PREFIX_LEN: usize = HEADER_LEN + 8 + 8 + 2;
/// PUBLISH flag: do not send OK (ERR is still sent).
pub const PUBLISH_QUIET: u8 = 0x01;
/// PUBLISH flag (v4): a header block follows the reply topic.
pub const PUBLISH_HEADERS: u8 = 0x02;
/// MSG flag (v4): a header block follows the reply topic.
pub const MSG_HEADERS: u8 = 0x01;

/// The `flags` byte of the frame that `frame_bytes` starts with (0 when it is not there),
/// for the one check a decoded [`Frame`] cannot make: a PUBLISH with `PUBLISH_HEADERS` and an
/// empty header block decodes exactly like one without the flag, yet only a v4 connection may
/// set it, and the codec does not know the connection's version.
pub fn frame_flags(frame_bytes: &[u8]) -> u8 {
    frame_bytes.get(FLAGS_OFFSET).copied().unwrap_or(0)
}
/// ACK flag (v2): acknowledge every in-flight message up to and including `seq`.
pub const ACK_CUMULATIVE: u8 = 0x01;
/// ACK flag (v2): negative acknowledgement, redeliver `seq` at once.
pub const ACK_NACK: u8 = 0x02;

/// What an ACK frame says about its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// This message is done.
    Single,
    /// Every message up to and including this one is done.
    Cumulative,
    /// This message failed; redeliver it now.
    Nack,
}
/// Frame overhead above the payload at worst (header + fixed fields + two 255-byte names +
/// lengths), so that a broker can derive its frame limit from its payload limit. MSG is the
/// largest envelope: its prefix plus a maximal topic and reply topic with their length bytes,
/// 542 bytes in all.
pub const FRAME_OVERHEAD_MAX: usize = MSG_PREFIX_LEN + 2 * (1 + SHORT_MAX);

/// The smallest legal `length` field: a header with an empty body.
const LENGTH_MIN: u32 = (HEADER_LEN - 4) as u32;
/// Longest short string (topic, reply topic, client name).
const SHORT_MAX: usize = u8::MAX as usize;
/// MSG body bytes before its PUBLISH-identical suffix.
const MSG_FIXED_LEN: usize = MSG_PREFIX_LEN - HEADER_LEN;

// Offsets inside a complete MSG frame, used by the fan-out helpers.
const ID_OFFSET: usize = 8;
const SEQ_OFFSET: usize = HEADER_LEN;
const TIMESTAMP_OFFSET: usize = SEQ_OFFSET + 8;
const DELIVERY_COUNT_OFFSET: usize = TIMESTAMP_OFFSET + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Hello = 0x01,
    Publish = 0x02,
    Subscribe = 0x03,
    Unsubscribe = 0x04,
    Ping = 0x05,
    Ack = 0x06,
    CreateTopic = 0x07,
    DeleteTopic = 0x08,
    Stats = 0x09,
    Ok = 0x80,
    Err = 0x81,
    Msg = 0x82,
    Pong = 0x83,
    Dropped = 0x84,
    Gap = 0x85,
    Ended = 0x86,
}

impl Opcode {
    #[inline]
    pub fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Publish,
            0x03 => Opcode::Subscribe,
            0x04 => Opcode::Unsubscribe,
            0x05 => Opcode::Ping,
            0x06 => Opcode::Ack,
            0x07 => Opcode::CreateTopic,
            0x08 => Opcode::DeleteTopic,
            0x09 => Opcode::Stats,
            0x80 => Opcode::Ok,
            0x81 => Opcode::Err,
            0x82 => Opcode::Msg,
            0x83 => Opcode::Pong,
            0x84 => Opcode::Dropped,
            0x85 => Opcode::Gap,
            0x86 => Opcode::Ended,
            _ => return None,
        })
    }

    /// Flag bits defined for this opcode; any other set bit makes the frame invalid.
    fn allowed_flags(self) -> u8 {
        match self {
            Opcode::Publish => PUBLISH_QUIET | PUBLISH_HEADERS,
            Opcode::Msg => MSG_HEADERS,
            Opcode::Ack => ACK_CUMULATIVE | ACK_NACK,
            _ => 0,
        }
    }
}

/// One decoded frame, borrowing its variable-length fields from the input buffer.
///
/// A `reply_to` of `Some(&[])` encodes exactly like `None` (reply length 0) and decodes as
/// `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        request_id: u32,
        version: u16,
        client_name: &'a [u8],
    },
    Publish {
        request_id: u32,
        quiet: bool,
        topic: &'a [u8],
        reply_to: Option<&'a [u8]>,
        /// The header block (v4), empty for none; see [`headers`].
        headers: &'a [u8],
        payload: &'a [u8],
    },
    Subscribe {
        request_id: u32,
        sub_id: u32,
        topic: &'a [u8],
        options: &'a [u8],
    },
    Unsubscribe {
        request_id: u32,
        sub_id: u32,
    },
    Ping {
        request_id: u32,
    },
    /// Since v2. Answered only with ERR, on failure.
    Ack {
        request_id: u32,
        sub_id: u32,
        seq: u64,
        kind: AckKind,
        /// The message's topic; empty when not given (encoded without the length byte).
        topic: &'a [u8],
    },
    /// Since v3.
    CreateTopic {
        request_id: u32,
        topic: &'a [u8],
        options: &'a [u8],
    },
    /// Since v3.
    DeleteTopic {
        request_id: u32,
        topic: &'a [u8],
    },
    /// Since v4. An empty `topic` names none.
    Stats {
        request_id: u32,
        topic: &'a [u8],
    },
    Ok {
        request_id: u32,
        data: &'a [u8],
    },
    Err {
        request_id: u32,
        code: u16,
        message: &'a [u8],
    },
    Msg {
        sub_id: u32,
        seq: u64,
        timestamp_ns: u64,
        delivery_count: u16,
        topic: &'a [u8],
        reply_to: Option<&'a [u8]>,
        /// The header block (v4), empty for none.
        headers: &'a [u8],
        payload: &'a [u8],
    },
    Pong {
        request_id: u32,
    },
    Dropped {
        sub_id: u32,
        count: u64,
    },
    /// Since v2: messages the subscriber asked to replay were already evicted.
    Gap {
        sub_id: u32,
        missed: u64,
        resume_seq: u64,
        /// The topic they were missed on; empty when not given.
        topic: &'a [u8],
    },
    /// Since v3: the broker ended the subscription.
    Ended {
        sub_id: u32,
        code: u16,
        message: &'a [u8],
    },
}

impl Frame<'_> {
    pub fn opcode(&self) -> Opcode {
        match self {
            Frame::Hello { .. } => Opcode::Hello,
            Frame::Publish { .. } => Opcode::Publish,
            Frame::Subscribe { .. } => Opcode::Subscribe,
            Frame::Unsubscribe { .. } => Opcode::Unsubscribe,
            Frame::Ping { .. } => Opcode::Ping,
            Frame::Ack { .. } => Opcode::Ack,
            Frame::CreateTopic { .. } => Opcode::CreateTopic,
            Frame::DeleteTopic { .. } => Opcode::DeleteTopic,
            Frame::Stats { .. } => Opcode::Stats,
            Frame::Ended { .. } => Opcode::Ended,
            Frame::Ok { .. } => Opcode::Ok,
            Frame::Err { .. } => Opcode::Err,
            Frame::Msg { .. } => Opcode::Msg,
            Frame::Pong { .. } => Opcode::Pong,
            Frame::Dropped { .. } => Opcode::Dropped,
            Frame::Gap { .. } => Opcode::Gap,
        }
    }

    /// The header's `id` field: the request id of a client's command, the subscription id
    /// of a delivery.
    pub fn header_id(&self) -> u32 {
        match *self {
            Frame::Hello { request_id, .. }
            | Frame::Publish { request_id, .. }
            | Frame::Subscribe { request_id, .. }
            | Frame::Unsubscribe { request_id, .. }
            | Frame::Ack { request_id, .. }
            | Frame::CreateTopic { request_id, .. }
            | Frame::DeleteTopic { request_id, .. }
            | Frame::Stats { request_id, .. }
            | Frame::Ping { request_id }
            | Frame::Ok { request_id, .. }
            | Frame::Err { request_id, .. }
            | Frame::Pong { request_id } => request_id,
            Frame::Msg { sub_id, .. }
            | Frame::Dropped { sub_id, .. }
            | Frame::Gap { sub_id, .. }
            | Frame::Ended { sub_id, .. } => sub_id,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Frame::Publish { quiet, headers, .. } => {
                let mut flags = 0;
                if *quiet {
                    flags |= PUBLISH_QUIET;
                }
                if !headers.is_empty() {
                    flags |= PUBLISH_HEADERS;
                }
                flags
            }
            Frame::Msg { headers, .. } if !headers.is_empty() => MSG_HEADERS,
            Frame::Ack {
                kind: AckKind::Cumulative,
                ..
            } => ACK_CUMULATIVE,
            Frame::Ack {
                kind: AckKind::Nack,
                ..
            } => ACK_NACK,
            _ => 0,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Hello { client_name, .. } => MAGIC.len() + 2 + 1 + client_name.len(),
            Frame::Publish {
                topic,
                reply_to,
                headers,
                payload,
                ..
            } => publish_body_len(topic, *reply_to, headers, payload),
            Frame::Subscribe { topic, options, .. } => 4 + 1 + topic.len() + options.len(),
            Frame::Unsubscribe { .. } => 4,
            Frame::Ack { topic: [], .. } => 12,
            Frame::Ack { topic, .. } => 12 + 1 + topic.len(),
            Frame::CreateTopic { topic, options, .. } => 1 + topic.len() + options.len(),
            Frame::DeleteTopic { topic, .. } => 1 + topic.len(),
            Frame::Stats { topic: [], .. } => 0,
            Frame::Stats { topic, .. } => 1 + topic.len(),
            Frame::Ended { message, .. } => 2 + message.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 0,
            Frame::Ok { data, .. } => data.len(),
            Frame::Err { message, .. } => 2 + message.len(),
            Frame::Msg {
                topic,
                reply_to,
                headers,
                payload,
                ..
            } => MSG_FIXED_LEN + publish_body_len(topic, *reply_to, headers, payload),
            Frame::Dropped { .. } => 8,
            Frame::Gap { topic: [], .. } => 16,
            Frame::Gap { topic, .. } => 16 + 1 + topic.len(),
        }
    }

    /// Total bytes [`Frame::encode`] appends, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the whole frame to `out`.
    ///
    /// # Panics
    ///
    /// If a topic, reply topic or client name is longer than 255 bytes, or the frame would not
    /// fit the `u32` length field. Both are caller bugs (decoded names are at most 255 bytes,
    /// payloads are bounded by the broker's limit); truncating instead would put a frame on the
    /// wire that silently differs from what the caller asked for.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let body_len = self.body_len();
        let length = u32::try_from(body_len + 8).expect("frame too long for its u32 length field");
        out.reserve(HEADER_LEN + body_len);
        out.extend_from_slice(&length.to_be_bytes());
        out.push(self.opcode() as u8);
        out.push(self.flags());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.header_id().to_be_bytes());
        match *self {
            Frame::Hello {
                version,
                client_name,
                ..
            } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                put_short(out, client_name);
            }
            Frame::Publish {
                topic,
                reply_to,
                headers,
                payload,
                ..
            } => put_publish_body(out, topic, reply_to, headers, payload),
            Frame::Subscribe {
                sub_id,
                topic,
                options,
                ..
            } => {
                out.extend_from_slice(&sub_id.to_be_bytes());
                put_short(out, topic);
                out.extend_from_slice(options);
            }
            Frame::Unsubscribe { sub_id, .. } => out.extend_from_slice(&sub_id.to_be_bytes()),
            Frame::Ack {
                sub_id, seq, topic, ..
            } => {
                out.extend_from_slice(&sub_id.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                if !topic.is_empty() {
                    put_short(out, topic);
                }
            }
            Frame::CreateTopic { topic, options, .. } => {
                put_short(out, topic);
                out.extend_from_slice(options);
            }
            Frame::DeleteTopic { topic, .. } => put_short(out, topic),
            Frame::Stats { topic, .. } => {
                if !topic.is_empty() {
                    put_short(out, topic);
                }
            }
            Frame::Ended { code, message, .. } => {
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message);
            }
            Frame::Ping { .. } | Frame::Pong { .. } => {}
            Frame::Ok { data, .. } => out.extend_from_slice(data),
            Frame::Err { code, message, .. } => {
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message);
            }
            Frame::Msg {
                seq,
                timestamp_ns,
                delivery_count,
                topic,
                reply_to,
                headers,
                payload,
                ..
            } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&timestamp_ns.to_be_bytes());
                out.extend_from_slice(&delivery_count.to_be_bytes());
                put_publish_body(out, topic, reply_to, headers, payload);
            }
            Frame::Dropped { count, .. } => out.extend_from_slice(&count.to_be_bytes()),
            Frame::Gap {
                missed,
                resume_seq,
                topic,
                ..
            } => {
                out.extend_from_slice(&missed.to_be_bytes());
                out.extend_from_slice(&resume_seq.to_be_bytes());
                if !topic.is_empty() {
                    put_short(out, topic);
                }
            }
        }
    }
}

fn publish_body_len(
    topic: &[u8],
    reply_to: Option<&[u8]>,
    headers: &[u8],
    payload: &[u8],
) -> usize {
    let header_block = if headers.is_empty() {
        0
    } else {
        2 + headers.len()
    };
    1 + topic.len() + 1 + reply_to.map_or(0, <[u8]>::len) + header_block + payload.len()
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len =
        u8::try_from(bytes.len()).expect("topic, reply topic or client name longer than 255 bytes");
    out.push(len);
    out.extend_from_slice(bytes);
}

fn put_publish_body(
    out: &mut Vec<u8>,
    topic: &[u8],
    reply_to: Option<&[u8]>,
    headers: &[u8],
    payload: &[u8],
) {
    put_short(out, topic);
    put_short(out, reply_to.unwrap_or(&[]));
    if !headers.is_empty() {
        let len = u16::try_from(headers.len()).expect("header block longer than 65535 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(headers);
    }
    out.extend_from_slice(payload);
}

/// Longest header name.
pub const HEADER_NAME_BYTES_MAX: usize = u8::MAX as usize;

/// Appends one header entry to a header block: `name_len: u8`, `name`, `value_len: u16`,
/// `value`. Names are 1 to 255 bytes of visible ASCII without `:`; values up to 65535 bytes.
pub fn put_header(block: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    check_header_name(name)?;
    let value_len =
        u16::try_from(value.len()).map_err(|_| "a header value is above 65535 bytes")?;
    block.push(name.len() as u8);
    block.extend_from_slice(name);
    block.extend_from_slice(&value_len.to_be_bytes());
    block.extend_from_slice(value);
    Ok(())
}

fn check_header_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > HEADER_NAME_BYTES_MAX {
        return Err("a header name is 1 to 255 bytes");
    }
    if !name.iter().all(|&b| b.is_ascii_graphic() && b != b':') {
        return Err("a header name is visible ASCII without ':'");
    }
    Ok(())
}

/// The entries of a header block, in order. Yields an error (and stops) at the first entry
/// that does not parse, so a block is valid exactly when no item is an error.
pub fn headers(block: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), &'static str>> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let (&name_len, after) = rest.split_first()?;
            let name = after.get(..usize::from(name_len))?;
            let after = &after[usize::from(name_len)..];
            let value_len = u16::from_be_bytes([*after.first()?, *after.get(1)?]);
            let value = after.get(2..2 + usize::from(value_len))?;
            Some((name, value, &after[2 + usize::from(value_len)..]))
        })();
        match parsed {
            Some((name, value, after)) => {
                if let Err(reason) = check_header_name(name) {
                    rest = &[];
                    return Some(Err(reason));
                }
                rest = after;
                Some(Ok((name, value)))
            }
            None => {
                rest = &[];
                Some(Err("a header entry runs past its block"))
            }
        }
    })
}

/// The value of the first header named `name` (ASCII case-insensitive), if the block has one.
pub fn header_value<'b>(block: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    headers(block)
        .map_while(Result::ok)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The length field is below 8 or the frame is above `frame_len_max`: the stream cannot be
    /// resynchronised; the caller replies ERR (id 0) and closes.
    Fatal {
        code: ErrorCode,
        reason: &'static str,
    },
    /// The frame's extent is known but its content is invalid; the caller replies ERR with
    /// `request_id` (the header's `id`, whatever the opcode) and skips `frame_len` bytes.
    Invalid {
        request_id: u32,
        frame_len: usize,
        code: ErrorCode,
        reason: &'static str,
    },
}

/// Decodes the frame at the start of `buf`.
///
/// `frame_len_max` bounds the whole frame, header included (`4 + length`). Returns `Ok(None)`
/// while more bytes are needed, and `Ok(Some((frame, consumed)))` with `consumed` the whole
/// frame's length otherwise. The length is checked as soon as its 4 bytes are present, but an
/// [`DecodeError::Invalid`] is only reported once the whole frame is buffered, so that the
/// caller can always skip it in one step. The version in a HELLO is not checked.
///
/// Never panics, whatever `buf` holds.
// Inlinable into the connection kinds' read loops, which sit in other codegen units.
#[inline]
pub fn decode(buf: &[u8], frame_len_max: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(length) = buf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) else {
        return Ok(None);
    };
    if length < LENGTH_MIN {
        return Err(DecodeError::Fatal {
            code: ErrorCode::BadFrame,
            reason: "length field below 8",
        });
    }
    // In u64 so that `4 + length` cannot overflow a 32-bit usize.
    let frame_len = u64::from(length) + 4;
    if frame_len > frame_len_max as u64 {
        return Err(DecodeError::Fatal {
            code: ErrorCode::FrameTooLarge,
            reason: "frame above the size limit",
        });
    }
    // Lossless: frame_len is at most frame_len_max, a usize.
    let frame_len = frame_len as usize;
    let Some(frame) = buf.get(..frame_len) else {
        return Ok(None);
    };

    // Cannot fail (frame_len >= HEADER_LEN), but a pattern keeps the decoder free of indexing.
    let Some((&[_, _, _, _, opcode, flags, r0, r1, i0, i1, i2, i3], body)) =
        frame.split_first_chunk::<HEADER_LEN>()
    else {
        return Ok(None);
    };
    let reserved = u16::from_be_bytes([r0, r1]);
    let id = u32::from_be_bytes([i0, i1, i2, i3]);
    let invalid = |code, reason| DecodeError::Invalid {
        request_id: id,
        frame_len,
        code,
        reason,
    };
    let Some(opcode) = Opcode::from_u8(opcode) else {
        return Err(invalid(ErrorCode::UnknownOpcode, "unknown opcode"));
    };
    if reserved != 0 {
        return Err(invalid(
            ErrorCode::BadFrame,
            "reserved header field is not zero",
        ));
    }
    if flags & !opcode.allowed_flags() != 0 {
        return Err(invalid(ErrorCode::BadFrame, "undefined flag bit set"));
    }
    // A PUBLISH, the hot path, is decoded in line: through the general body decoder's call,
    // its frame was moved twice more (about 40 instructions a publish, callgrind).
    let decoded = match opcode {
        Opcode::Publish => decode_publish(flags, id, Reader(body)),
        _ => decode_body(opcode, flags, id, Reader(body)),
    };
    match decoded {
        Ok(frame) => Ok(Some((frame, frame_len))),
        Err(reason) => Err(invalid(ErrorCode::BadFrame, reason)),
    }
}

const NAME_OVERRUN: &str = "length byte runs past the end of the body";

#[inline(always)]
fn decode_publish(flags: u8, id: u32, r: Reader<'_>) -> Result<Frame<'_>, &'static str> {
    let (topic, reply_to, headers, payload) = r
        .publish_body(flags & PUBLISH_HEADERS != 0)
        .ok_or(NAME_OVERRUN)?;
    // Most publishes carry no headers: no iterator set up to walk an empty block.
    if !headers.is_empty() {
        if let Some(Err(reason)) = self::headers(headers).find(Result::is_err) {
            return Err(reason);
        }
    }
    Ok(Frame::Publish {
        request_id: id,
        quiet: flags & PUBLISH_QUIET != 0,
        topic,
        reply_to,
        headers,
        payload,
    })
}

fn decode_body(
    opcode: Opcode,
    flags: u8,
    id: u32,
    mut r: Reader<'_>,
) -> Result<Frame<'_>, &'static str> {
    const SHORT_BODY: &str = "body shorter than its fixed fields";
    let frame = match opcode {
        Opcode::Hello => {
            let magic = r.array::<4>().ok_or(SHORT_BODY)?;
            if magic != MAGIC {
                return Err("HELLO magic is not CBUS");
            }
            let version = r.u16().ok_or(SHORT_BODY)?;
            let client_name = r.short().ok_or(SHORT_BODY)?.ok_or(NAME_OVERRUN)?;
            r.end().ok_or("bytes after the HELLO client name")?;
            Frame::Hello {
                request_id: id,
                version,
                client_name,
            }
        }
        Opcode::Publish => return decode_publish(flags, id, r),
        Opcode::Subscribe => {
            let sub_id = r.u32().ok_or(SHORT_BODY)?;
            let topic = r.short().ok_or(SHORT_BODY)?.ok_or(NAME_OVERRUN)?;
            Frame::Subscribe {
                request_id: id,
                sub_id,
                topic,
                options: r.0,
            }
        }
        Opcode::Unsubscribe => {
            let sub_id = r.u32().ok_or("UNSUBSCRIBE body is not 4 bytes")?;
            r.end().ok_or("UNSUBSCRIBE body is not 4 bytes")?;
            Frame::Unsubscribe {
                request_id: id,
                sub_id,
            }
        }
        Opcode::Ack => {
            const ACK_LEN: &str = "ACK body is not 12 bytes plus an optional topic";
            let sub_id = r.u32().ok_or(ACK_LEN)?;
            let seq = r.u64().ok_or(ACK_LEN)?;
            let topic = r.optional_short().ok_or(ACK_LEN)?;
            r.end().ok_or(ACK_LEN)?;
            let kind = match (flags & ACK_CUMULATIVE != 0, flags & ACK_NACK != 0) {
                (false, false) => AckKind::Single,
                (true, false) => AckKind::Cumulative,
                (false, true) => AckKind::Nack,
                (true, true) => return Err("ACK cannot be both cumulative and negative"),
            };
            Frame::Ack {
                request_id: id,
                sub_id,
                seq,
                kind,
                topic,
            }
        }
        Opcode::CreateTopic => {
            let topic = r.short().ok_or(SHORT_BODY)?.ok_or(NAME_OVERRUN)?;
            Frame::CreateTopic {
                request_id: id,
                topic,
                options: r.0,
            }
        }
        Opcode::DeleteTopic => {
            let topic = r.short().ok_or(SHORT_BODY)?.ok_or(NAME_OVERRUN)?;
            r.end().ok_or("bytes after the DELETE_TOPIC topic")?;
            Frame::DeleteTopic {
                request_id: id,
                topic,
            }
        }
        Opcode::Stats => {
            const STATS_BODY: &str = "STATS body is an optional topic";
            let topic = r.optional_short().ok_or(STATS_BODY)?;
            r.end().ok_or(STATS_BODY)?;
            Frame::Stats {
                request_id: id,
                topic,
            }
        }
        Opcode::Ended => {
            let code = r.u16().ok_or(SHORT_BODY)?;
            Frame::Ended {
                sub_id: id,
                code,
                message: r.0,
            }
        }
        Opcode::Ping => {
            r.end().ok_or("PING body is not empty")?;
            Frame::Ping { request_id: id }
        }
        Opcode::Ok => Frame::Ok {
            request_id: id,
            data: r.0,
        },
        Opcode::Err => {
            let code = r.u16().ok_or(SHORT_BODY)?;
            Frame::Err {
                request_id: id,
                code,
                message: r.0,
            }
        }
        Opcode::Msg => {
            let (seq, timestamp_ns, delivery_count) = match (r.u64(), r.u64(), r.u16()) {
                (Some(s), Some(t), Some(d)) => (s, t, d),
                _ => return Err(SHORT_BODY),
            };
            let (topic, reply_to, headers, payload) = r
                .publish_body(flags & MSG_HEADERS != 0)
                .ok_or(NAME_OVERRUN)?;
            if let Some(Err(reason)) = self::headers(headers).find(Result::is_err) {
                return Err(reason);
            }
            Frame::Msg {
                sub_id: id,
                seq,
                timestamp_ns,
                delivery_count,
                topic,
                reply_to,
                headers,
                payload,
            }
        }
        Opcode::Pong => {
            r.end().ok_or("PONG body is not empty")?;
            Frame::Pong { request_id: id }
        }
        Opcode::Dropped => {
            let count = r.u64().ok_or("DROPPED body is not 8 bytes")?;
            r.end().ok_or("DROPPED body is not 8 bytes")?;
            Frame::Dropped { sub_id: id, count }
        }
        Opcode::Gap => {
            const GAP_LEN: &str = "GAP body is not 16 bytes plus an optional topic";
            let missed = r.u64().ok_or(GAP_LEN)?;
            let resume_seq = r.u64().ok_or(GAP_LEN)?;
            let topic = r.optional_short().ok_or(GAP_LEN)?;
            r.end().ok_or(GAP_LEN)?;
            Frame::Gap {
                sub_id: id,
                missed,
                resume_seq,
                topic,
            }
        }
    };
    Ok(frame)
}

/// Topic, reply topic and payload of a PUBLISH body or a MSG suffix.
type PublishParts<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8], &'a [u8]);

/// Bounds-checked cursor over a frame; every read returns `None` instead of panicking, which
/// is what keeps [`decode`] total over arbitrary input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// A short string: `None` if the length byte is missing, `Some(None)` if it overruns.
    fn short(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.u8()?;
        Some(self.take(usize::from(len)))
    }

    /// A trailing short string that may be absent: nothing left reads as empty.
    fn optional_short(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return Some(&[]);
        }
        self.short()?
    }

    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }

    // Once per PUBLISH (or MSG) decoded: inlined into the decoder.
    #[inline]
    fn publish_body(mut self, with_headers: bool) -> Option<PublishParts<'a>> {
        let topic = self.short()??;
        let reply = self.short()??;
        let headers = if with_headers {
            let len = usize::from(self.u16()?);
            let block = self.0.get(..len)?;
            self.0 = &self.0[len..];
            block
        } else {
            &[]
        };
        Some((topic, (!reply.is_empty()).then_some(reply), headers, self.0))
    }
}

/// Appends a MSG frame with sub_id 0, seq 0 and delivery_count 1 built from a PUBLISH body's
/// pieces. The broker builds it once per message and patches the per-subscriber fields with the
/// `msg_set_*` helpers, instead of re-encoding the message for every subscriber.
///
/// # Panics
///
/// Under the same conditions as [`Frame::encode`].
pub fn encode_msg_from_publish(
    out: &mut Vec<u8>,
    timestamp_ns: u64,
    (topic, reply_to): (&[u8], Option<&[u8]>),
    headers: &[u8],
    payload: &[u8],
) {
    Frame::Msg {
        sub_id: 0,
        seq: 0,
        timestamp_ns,
        delivery_count: 1,
        topic,
        reply_to,
        headers,
        payload,
    }
    .encode(out);
}

/// The length of the MSG frame [`encode_msg_from_publish`] makes of these parts, or `None`
/// when a part is too long for its length field or the frame for its own (which the publish
/// limits never allow).
#[inline]
pub fn msg_from_publish_len(
    (topic, reply_to): (&[u8], Option<&[u8]>),
    headers: &[u8],
    payload_len: usize,
) -> Option<usize> {
    let reply_to = reply_to.unwrap_or_default();
    u8::try_from(topic.len()).ok()?;
    u8::try_from(reply_to.len()).ok()?;
    u16::try_from(headers.len()).ok()?;
    let header_block = if headers.is_empty() {
        0
    } else {
        2 + headers.len()
    };
    // The header, seq, timestamp, delivery count, topic length; then the PUBLISH body.
    let len = MSG_PREFIX_LEN + 1 + topic.len() + 1 + reply_to.len() + header_block + payload_len;
    u32::try_from(len - 4).ok()?;
    Some(len)
}

/// Writes the frame [`encode_msg_from_publish`] encodes straight into `out`, the frame's final
/// (uninitialised) buffer, which must be [`msg_from_publish_len`] bytes long: the payload is
/// copied once, from the read buffer to where every subscriber reads it. Written field by
/// field, since it runs once per publish (the general encoder matches on the frame kind for
/// every field; a property test holds the two to the same bytes). `Some` only once every
/// byte of `out` is written; `None`, with `out` left partly written, when `out` has the wrong
/// length.
// Inlined into its one caller on the publish path, which has just computed the same length
// to size `out`, so the check here costs next to nothing.
#[inline]
pub fn write_msg_from_publish(
    out: &mut [MaybeUninit<u8>],
    timestamp_ns: u64,
    (topic, reply_to): (&[u8], Option<&[u8]>),
    headers: &[u8],
    payload: &[u8],
) -> Option<()> {
    let reply_to = reply_to.unwrap_or_default();
    if msg_from_publish_len((topic, reply_to.into()), headers, payload.len()) != Some(out.len()) {
        return None;
    }
    // Everything before the topic in one array (opcode, flags, two reserved bytes,
    // subscription id 0 and seq 0 stay zero), so its bytes are stores, not copies.
    let mut prefix = [0u8; MSG_PREFIX_LEN + 1];
    prefix[..4].copy_from_slice(&((out.len() - 4) as u32).to_be_bytes());
    prefix[4] = Opcode::Msg as u8;
    prefix[5] = if headers.is_empty() { 0 } else { MSG_HEADERS };
    prefix[20..28].copy_from_slice(&timestamp_ns.to_be_bytes());
    prefix[28..30].copy_from_slice(&1u16.to_be_bytes());
    prefix[30] = topic.len() as u8;
    // A fixed-size store rather than a copy of unknown length (a call to memcpy).
    let (prefix_slots, mut rest) = out.split_first_chunk_mut::<{ MSG_PREFIX_LEN + 1 }>()?;
    // SAFETY: `[MaybeUninit<u8>; N]` has the layout of `[u8; N]`, and the slots are ours
    // to write.
    unsafe {
        prefix_slots
            .as_mut_ptr()
            .cast::<[u8; MSG_PREFIX_LEN + 1]>()
            .write(prefix)
    };
    let mut put = |bytes: &[u8]| {
        let (here, after) = std::mem::take(&mut rest).split_at_mut(bytes.len());
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8` and every `u8` is a valid one;
        // the cast slice is only read from.
        here.copy_from_slice(unsafe { &*(bytes as *const [u8] as *const [MaybeUninit<u8>]) });
        rest = after;
    };
    put(topic);
    put(&[reply_to.len() as u8]);
    if !reply_to.is_empty() {
        put(reply_to);
    }
    if !headers.is_empty() {
        put(&(headers.len() as u16).to_be_bytes());
        put(headers);
    }
    put(payload);
    // `Some` promises every byte of `out` written (the message frame reads them as
    // initialised): the fields above add up to `msg_from_publish_len`, checked equal to
    // `out.len()` on entry (held by the property test
    // `the_msg_head_encoder_writes_what_the_general_one_does`); this makes it certain, for a
    // few instructions.
    rest.is_empty().then_some(())
}

// The helpers below take a complete MSG frame built by this module. Passing anything else is
// a broker bug, caught by the debug assertion; they are never called on network input.

fn is_msg_frame(frame: &[u8]) -> bool {
    matches!(decode(frame, usize::MAX), Ok(Some((Frame::Msg { .. }, n))) if n == frame.len())
}

fn put_at<const N: usize>(frame: &mut [u8], offset: usize, bytes: [u8; N]) {
    debug_assert!(is_msg_frame(frame), "not a complete MSG frame");
    frame[offset..offset + N].copy_from_slice(&bytes);
}

fn get_at<const N: usize>(frame: &[u8], offset: usize) -> [u8; N] {
    debug_assert!(is_msg_frame(frame), "not a complete MSG frame");
    let mut bytes = [0; N];
    bytes.copy_from_slice(&frame[offset..offset + N]);
    bytes
}

/// Writes the header id, i.e. the subscription id of a MSG.
pub fn msg_set_sub_id(frame: &mut [u8], sub_id: u32) {
    put_at(frame, ID_OFFSET, sub_id.to_be_bytes());
}

/// The `flags` byte of a frame.
const FLAGS_OFFSET: usize = 5;

pub fn msg_flags(frame: &[u8]) -> u8 {
    frame.get(FLAGS_OFFSET).copied().unwrap_or(0)
}

pub fn msg_set_seq(frame: &mut [u8], seq: u64) {
    put_at(frame, SEQ_OFFSET, seq.to_be_bytes());
}

pub fn msg_seq(frame: &[u8]) -> u64 {
    u64::from_be_bytes(get_at(frame, SEQ_OFFSET))
}

pub fn msg_set_timestamp_ns(frame: &mut [u8], timestamp_ns: u64) {
    put_at(frame, TIMESTAMP_OFFSET, timestamp_ns.to_be_bytes());
}

pub fn msg_timestamp_ns(frame: &[u8]) -> u64 {
    u64::from_be_bytes(get_at(frame, TIMESTAMP_OFFSET))
}

pub fn msg_delivery_count(frame: &[u8]) -> u16 {
    u16::from_be_bytes(get_at(frame, DELIVERY_COUNT_OFFSET))
}

pub fn msg_set_delivery_count(frame: &mut [u8], n: u16) {
    put_at(frame, DELIVERY_COUNT_OFFSET, n.to_be_bytes());
}

pub fn msg_topic(frame: &[u8]) -> &[u8] {
    let [topic_len] = get_at(frame, MSG_PREFIX_LEN);
    &frame[MSG_PREFIX_LEN + 1..][..usize::from(topic_len)]
}

/// Where a MSG frame's header block (its `u16` length) or, without headers, its payload
/// starts.
fn msg_after_reply(frame: &[u8]) -> usize {
    let reply_len_at = MSG_PREFIX_LEN + 1 + msg_topic(frame).len();
    let [reply_len] = get_at(frame, reply_len_at);
    reply_len_at + 1 + usize::from(reply_len)
}

/// The header block of a MSG frame (empty without headers).
pub fn msg_headers(frame: &[u8]) -> &[u8] {
    if msg_flags(frame) & MSG_HEADERS == 0 {
        return &[];
    }
    let at = msg_after_reply(frame);
    let len = u16::from_be_bytes(get_at(frame, at));
    &frame[at + 2..][..usize::from(len)]
}

pub fn msg_payload(frame: &[u8]) -> &[u8] {
    let at = msg_after_reply(frame);
    if msg_flags(frame) & MSG_HEADERS == 0 {
        return &frame[at..];
    }
    let len = u16::from_be_bytes(get_at(frame, at));
    &frame[at + 2 + usize::from(len)..]
}

/// The protocol version from which MSG frames carry their header block; older clients get
/// each message without it (see [`stage_msg`]).
pub const HEADERS_VERSION: u16 = 4;

/// Whether a client of protocol version `version` must get MSG frames without their header
/// block. Asked once per staging pass, not once per delivery: the fan-out path pays only for
/// the flag test.
pub fn strips_headers(version: u16) -> bool {
    version < HEADERS_VERSION
}

/// Appends a MSG frame with the subscription id patched in: as is, or without its header
/// block when `strip_headers` (a v1-v3 client, see [`strips_headers`]) and the frame has one.
/// The broker's fan-out calls this once per delivery, so the common case (no header block to
/// take out) is the copy and the id patch, inlined; the strip is out of line.
#[inline]
pub fn stage_msg(out: &mut Vec<u8>, frame: &[u8], sub_id: u32, strip_headers: bool) {
    if strip_headers && msg_flags(frame) & MSG_HEADERS != 0 {
        stage_msg_without_headers(out, frame, sub_id);
        return;
    }
    let at = out.len();
    out.extend_from_slice(frame);
    msg_set_sub_id(&mut out[at..], sub_id);
}

/// The MSG frame without its header block: the length fixed, the flag cleared.
#[cold]
#[inline(never)]
fn stage_msg_without_headers(out: &mut Vec<u8>, frame: &[u8], sub_id: u32) {
    let at = out.len();
    let headers_at = msg_after_reply(frame);
    let block = 2 + msg_headers(frame).len();
    out.extend_from_slice(&frame[..headers_at]);
    out.extend_from_slice(&frame[headers_at + block..]);
    let length = u32::from_be_bytes(get_at(frame, 0)) - block as u32;
    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
    out[at + FLAGS_OFFSET] = 0;
    msg_set_sub_id(&mut out[at..], sub_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// The flag a decoded PUBLISH cannot show: set, with an empty header block.
    #[test]
    fn frame_flags_shows_the_headers_flag_of_an_empty_block() {
        let mut frame = Vec::new();
        Frame::Publish {
            request_id: 1,
            quiet: false,
            topic: b"t",
            reply_to: None,
            headers: &[],
            payload: b"x",
        }
        .encode(&mut frame);
        assert_eq!(frame_flags(&frame), 0);
        // The same PUBLISH with the flag and a zero `headers_len`.
        frame[FLAGS_OFFSET] |= PUBLISH_HEADERS;
        frame.splice(HEADER_LEN + 3..HEADER_LEN + 3, [0, 0]);
        let length = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let (decoded, _) = decode(&frame, 1 << 20).unwrap().unwrap();
        assert!(matches!(decoded, Frame::Publish { headers: [], .. }));
        assert_eq!(frame_flags(&frame), PUBLISH_HEADERS);
        assert_eq!(frame_flags(&frame[..5]), 0);
    }

    #[test]
    fn stage_msg_takes_the_header_block_out_only_for_older_clients() {
        let mut block = Vec::new();
        put_header(&mut block, b"id", b"42").unwrap();
        let msg = |headers| Frame::Msg {
            sub_id: 0,
            seq: 9,
            timestamp_ns: 1,
            delivery_count: 1,
            topic: b"t",
            reply_to: Some(b"r"),
            headers,
            payload: b"hello",
        };
        let (mut with, mut without) = (Vec::new(), Vec::new());
        msg(&block).encode(&mut with);
        msg(&[]).encode(&mut without);
        let staged = |frame: &[u8], strip| {
            let mut out = vec![0xAA];
            stage_msg(&mut out, frame, 7, strip);
            out.split_off(1)
        };
        let with_id = |frame: &[u8]| {
            let mut frame = frame.to_vec();
            msg_set_sub_id(&mut frame, 7);
            frame
        };
        assert_eq!(staged(&with, false), with_id(&with));
        assert_eq!(staged(&without, true), with_id(&without));
        assert_eq!(staged(&without, false), with_id(&without));
        // A v1-v3 client gets the same message as one published without headers.
        assert!(strips_headers(3) && !strips_headers(4));
        assert_eq!(staged(&with, true), with_id(&without));
    }

    const LIMIT: usize = 1024;

    #[derive(Debug)]
    enum Expect<'a> {
        Frame(Frame<'a>),
        Incomplete,
        Fatal(ErrorCode),
        Invalid {
            request_id: u32,
            frame_len: usize,
            code: ErrorCode,
        },
    }

    /// Decodes `bytes` alone with [`LIMIT`]; a decoded frame must consume all of them and
    /// re-encode to the same bytes, which pins the encoder to the hand-written layouts too.
    fn check(bytes: &[u8], expect: Expect<'_>) {
        let got = decode(bytes, LIMIT);
        match expect {
            Expect::Frame(frame) => {
                assert_eq!(got, Ok(Some((frame, bytes.len()))), "bytes {bytes:02x?}");
                let mut out = Vec::new();
                frame.encode(&mut out);
                assert_eq!(out, bytes);
                assert_eq!(frame.encoded_len(), bytes.len());
            }
            Expect::Incomplete => assert_eq!(got, Ok(None), "bytes {bytes:02x?}"),
            Expect::Fatal(code) => {
                assert!(
                    matches!(got, Err(DecodeError::Fatal { code: c, .. }) if c == code),
                    "{got:?}"
                )
            }
            Expect::Invalid {
                request_id,
                frame_len,
                code,
            } => assert!(
                matches!(got, Err(DecodeError::Invalid { request_id: r, frame_len: n, code: c, .. })
                    if (r, n, c) == (request_id, frame_len, code)),
                "{got:?}"
            ),
        }
    }

    /// Builds a frame from header fields and raw body bytes, computing only the length.
    fn raw(opcode: u8, flags: u8, reserved: u16, id: u32, body: &[&[u8]]) -> Vec<u8> {
        let body = body.concat();
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.push(opcode);
        out.push(flags);
        out.extend_from_slice(&reserved.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn hello_bytes() -> Vec<u8> {
        [
            &[0, 0, 0, 18, 0x01, 0x00, 0, 0, 0, 0, 0, 7][..],
            b"CBUS",
            &[0, 1],
            &[3],
            b"cli",
        ]
        .concat()
    }

    fn msg_bytes() -> Vec<u8> {
        [
            &[0, 0, 0, 30, 0x82, 0x00, 0, 0, 0, 0, 0, 0x0a][..],
            &[0, 0, 0, 0, 0, 0, 1, 2],
            &[0x17, 0x9e, 0, 0, 0, 0, 0, 5],
            &[0, 1],
            &[1],
            b"t",
            &[0],
            b"p",
        ]
        .concat()
    }

    #[test]
    fn every_opcode_decodes_from_hand_written_bytes() {
        check(
            &hello_bytes(),
            Expect::Frame(Frame::Hello {
                request_id: 7,
                version: 1,
                client_name: b"cli",
            }),
        );
        check(
            &[
                &[0, 0, 0, 15, 0x01, 0, 0, 0, 0, 0, 0, 1][..],
                b"CBUS",
                &[0, 9],
                &[0],
            ]
            .concat(),
            Expect::Frame(Frame::Hello {
                request_id: 1,
                version: 9,
                client_name: b"",
            }),
        );
        check(
            &[
                &[0, 0, 0, 16, 0x02, 0x01, 0, 0, 0, 0, 0, 9][..],
                &[3],
                b"a.b",
                &[1],
                b"r",
                b"hi",
            ]
            .concat(),
            Expect::Frame(Frame::Publish {
                request_id: 9,
                quiet: true,
                topic: b"a.b",
                reply_to: Some(b"r"),
                headers: &[],
                payload: b"hi",
            }),
        );
        // The example in the module documentation.
        check(
            &[
                0, 0, 0, 0x0f, 0x02, 0, 0, 0, 0, 0, 0, 2, 3, 0x74, 0x2e, 0x61, 0, 0x68, 0x69,
            ],
            Expect::Frame(Frame::Publish {
                request_id: 2,
                quiet: false,
                topic: b"t.a",
                reply_to: None,
                headers: &[],
                payload: b"hi",
            }),
        );
        check(
            &[0, 0, 0, 10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Expect::Frame(Frame::Publish {
                request_id: 0,
                quiet: false,
                topic: b"",
                reply_to: None,
                headers: &[],
                payload: b"",
            }),
        );
        check(
            &[
                &[0, 0, 0, 16, 0x03, 0, 0, 0, 0, 0, 0, 3][..],
                &[1, 2, 3, 4],
                &[3],
                b"t.*",
            ]
            .concat(),
            Expect::Frame(Frame::Subscribe {
                request_id: 3,
                sub_id: 0x0102_0304,
                topic: b"t.*",
                options: b"",
            }),
        );
        check(
            &[
                &[0, 0, 0, 18, 0x03, 0, 0, 0, 0, 0, 0, 3][..],
                &[0, 0, 0, 8],
                &[1],
                b"t",
                &[1, 0, 1, 0xff],
            ]
            .concat(),
            Expect::Frame(Frame::Subscribe {
                request_id: 3,
                sub_id: 8,
                topic: b"t",
                options: &[1, 0, 1, 0xff],
            }),
        );
        check(
            &[
                &[0, 0, 0, 20, 0x06, 0x01, 0, 0, 0, 0, 0, 5][..],
                &[0, 0, 0, 2],
                &[0, 0, 0, 0, 0, 0, 1, 0],
            ]
            .concat(),
            Expect::Frame(Frame::Ack {
                request_id: 5,
                sub_id: 2,
                seq: 256,
                kind: AckKind::Cumulative,
                topic: b"",
            }),
        );
        check(
            &[
                &[0, 0, 0, 24, 0x06, 0x02, 0, 0, 0, 0, 0, 5][..],
                &[0, 0, 0, 2],
                &[0, 0, 0, 0, 0, 0, 0, 7],
                &[3],
                b"a.b",
            ]
            .concat(),
            Expect::Frame(Frame::Ack {
                request_id: 5,
                sub_id: 2,
                seq: 7,
                kind: AckKind::Nack,
                topic: b"a.b",
            }),
        );
        check(
            &[
                &[0, 0, 0, 29, 0x85, 0, 0, 0, 0, 0, 0, 4][..],
                &[0, 0, 0, 0, 0, 0, 0, 2],
                &[0, 0, 0, 0, 0, 0, 0, 9],
                &[4],
                b"a.bc",
            ]
            .concat(),
            Expect::Frame(Frame::Gap {
                sub_id: 4,
                missed: 2,
                resume_seq: 9,
                topic: b"a.bc",
            }),
        );
        check(
            &[&[0, 0, 0, 12, 0x08, 0, 0, 0, 0, 0, 0, 9][..], &[3], b"a.b"].concat(),
            Expect::Frame(Frame::DeleteTopic {
                request_id: 9,
                topic: b"a.b",
            }),
        );
        check(
            &[0, 0, 0, 8, 0x09, 0, 0, 0, 0, 0, 0, 4],
            Expect::Frame(Frame::Stats {
                request_id: 4,
                topic: b"",
            }),
        );
        check(
            &[&[0, 0, 0, 12, 0x09, 0, 0, 0, 0, 0, 0, 4][..], &[3], b"a.b"].concat(),
            Expect::Frame(Frame::Stats {
                request_id: 4,
                topic: b"a.b",
            }),
        );
        check(
            &[
                &[0, 0, 0, 14, 0x86, 0, 0, 0, 0, 0, 0, 4][..],
                &[0, 23],
                b"gone",
            ]
            .concat(),
            Expect::Frame(Frame::Ended {
                sub_id: 4,
                code: 23,
                message: b"gone",
            }),
        );
        check(
            &[
                &[0, 0, 0, 15, 0x07, 0, 0, 0, 0, 0, 0, 9][..],
                &[3],
                b"a.b",
                &[3, 0, 0],
            ]
            .concat(),
            Expect::Frame(Frame::CreateTopic {
                request_id: 9,
                topic: b"a.b",
                options: &[3, 0, 0],
            }),
        );
        check(
            &[0, 0, 0, 12, 0x04, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 5],
            Expect::Frame(Frame::Unsubscribe {
                request_id: 4,
                sub_id: 5,
            }),
        );
        check(
            &[0, 0, 0, 8, 0x05, 0, 0, 0, 0xff, 0, 0, 6],
            Expect::Frame(Frame::Ping {
                request_id: 0xff00_0006,
            }),
        );
        check(
            &[
                0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 0x10, 0, 0,
            ],
            Expect::Frame(Frame::Ok {
                request_id: 1,
                data: &[0, 1, 0, 2, 0, 0x10, 0, 0],
            }),
        );
        check(
            &[
                &[0, 0, 0, 13, 0x81, 0, 0, 0, 0, 0, 0, 2][..],
                &[0, 4],
                b"bad",
            ]
            .concat(),
            Expect::Frame(Frame::Err {
                request_id: 2,
                code: ErrorCode::BadTopic.as_u16(),
                message: b"bad",
            }),
        );
        check(
            &msg_bytes(),
            Expect::Frame(Frame::Msg {
                sub_id: 0x0a,
                seq: 0x0102,
                timestamp_ns: 0x179e_0000_0000_0005,
                delivery_count: 1,
                topic: b"t",
                reply_to: None,
                headers: &[],
                payload: b"p",
            }),
        );
        check(
            &[0, 0, 0, 8, 0x83, 0, 0, 0, 0, 0, 0, 6],
            Expect::Frame(Frame::Pong { request_id: 6 }),
        );
        check(
            &[
                0, 0, 0, 16, 0x84, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 42,
            ],
            Expect::Frame(Frame::Dropped {
                sub_id: 3,
                count: 42,
            }),
        );
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for bytes in [hello_bytes(), msg_bytes()] {
            for n in 0..bytes.len() {
                check(&bytes[..n], Expect::Incomplete);
            }
        }
    }

    #[test]
    fn length_out_of_range_is_fatal_from_the_first_four_bytes() {
        check(&[0, 0, 0x10, 0], Expect::Fatal(ErrorCode::FrameTooLarge));
        check(
            &[0xff, 0xff, 0xff, 0xff, 0x05],
            Expect::Fatal(ErrorCode::FrameTooLarge),
        );
        check(&[0, 0, 0, 7], Expect::Fatal(ErrorCode::BadFrame));
        check(
            &[0, 0, 0, 0, 0x05, 0, 0, 0, 0, 0, 0, 0],
            Expect::Fatal(ErrorCode::BadFrame),
        );
        // The limit counts the whole frame: 4 + length.
        let ok = raw(0x80, 0, 0, 1, &[&[0; 20]]);
        assert!(matches!(decode(&ok, ok.len()), Ok(Some((_, n))) if n == ok.len()));
        assert!(matches!(
            decode(&ok, ok.len() - 1),
            Err(DecodeError::Fatal {
                code: ErrorCode::FrameTooLarge,
                ..
            })
        ));
        // The largest length does not overflow and simply waits for its body.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], usize::MAX), Ok(None));
    }

    #[test]
    fn invalid_frames_report_their_id_and_extent() {
        let invalid = |bytes: &[u8], code| {
            let request_id = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
            check(
                bytes,
                Expect::Invalid {
                    request_id,
                    frame_len: bytes.len(),
                    code,
                },
            );
        };
        invalid(
            &raw(0x0a, 0, 0, 0x11, &[&[1, 2, 3]]),
            ErrorCode::UnknownOpcode,
        );
        // STATS: a topic and nothing after it.
        invalid(
            &raw(0x09, 0, 0, 3, &[&[1, b'a', b'b']]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x09, 0, 0, 3, &[&[3, b'a']]), ErrorCode::BadFrame);
        invalid(&raw(0x00, 0, 0, 1, &[]), ErrorCode::UnknownOpcode);
        invalid(&raw(0x87, 0, 0, 1, &[]), ErrorCode::UnknownOpcode);
        invalid(
            &raw(0x08, 0, 0, 1, &[&[1, b'a', b'b']]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x86, 0, 0, 1, &[&[0]]), ErrorCode::BadFrame);
        invalid(&raw(0x05, 0x01, 0, 2, &[]), ErrorCode::BadFrame);
        invalid(
            &raw(0x02, 0x02, 0, 3, &[&[1], b"t", &[0]]),
            ErrorCode::BadFrame,
        );
        invalid(
            &raw(0x82, 0x80, 0, 3, &[&[0; 18], &[1], b"t", &[0]]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x05, 0, 1, 4, &[]), ErrorCode::BadFrame);
        invalid(&raw(0x05, 0, 0x8000, 4, &[]), ErrorCode::BadFrame);
        invalid(
            &raw(0x01, 0, 0, 5, &[b"CBUX", &[0, 1], &[0]]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x01, 0, 0, 5, &[b"CBU"]), ErrorCode::BadFrame);
        invalid(
            &raw(0x01, 0, 0, 5, &[b"CBUS", &[0, 1]]),
            ErrorCode::BadFrame,
        );
        invalid(
            &raw(0x01, 0, 0, 6, &[b"CBUS", &[0, 1], &[5], b"cli"]),
            ErrorCode::BadFrame,
        );
        invalid(
            &raw(0x01, 0, 0, 6, &[b"CBUS", &[0, 1], &[1], b"cli"]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x02, 0, 0, 7, &[]), ErrorCode::BadFrame);
        invalid(&raw(0x02, 0, 0, 7, &[&[4], b"t.a"]), ErrorCode::BadFrame);
        invalid(&raw(0x02, 0, 0, 7, &[&[3], b"t.a"]), ErrorCode::BadFrame);
        invalid(
            &raw(0x02, 0, 0, 7, &[&[3], b"t.a", &[2], b"r"]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x03, 0, 0, 8, &[&[0, 0, 1]]), ErrorCode::BadFrame);
        invalid(&raw(0x03, 0, 0, 8, &[&[0, 0, 0, 1]]), ErrorCode::BadFrame);
        invalid(
            &raw(0x03, 0, 0, 8, &[&[0, 0, 0, 1], &[9], b"t"]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x04, 0, 0, 9, &[&[0, 0, 1]]), ErrorCode::BadFrame);
        invalid(
            &raw(0x04, 0, 0, 9, &[&[0, 0, 0, 0, 1]]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x05, 0, 0, 10, &[&[0]]), ErrorCode::BadFrame);
        invalid(&raw(0x81, 0, 0, 11, &[&[0]]), ErrorCode::BadFrame);
        invalid(&raw(0x82, 0, 0, 12, &[&[0; 18]]), ErrorCode::BadFrame);
        invalid(&raw(0x82, 0, 0, 12, &[&[0; 17]]), ErrorCode::BadFrame);
        invalid(
            &raw(0x82, 0, 0, 12, &[&[0; 18], &[2], b"t", &[0]]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x06, 0x03, 0, 12, &[&[0; 12]]), ErrorCode::BadFrame);
        invalid(&raw(0x06, 0, 0, 12, &[&[0; 11]]), ErrorCode::BadFrame);
        invalid(
            &raw(0x06, 0, 0, 12, &[&[0; 12], &[2, b'a']]),
            ErrorCode::BadFrame,
        );
        invalid(
            &raw(0x06, 0, 0, 12, &[&[0; 12], &[1, b'a', b'b']]),
            ErrorCode::BadFrame,
        );
        invalid(
            &raw(0x85, 0, 0, 13, &[&[0; 16], &[3, b'a']]),
            ErrorCode::BadFrame,
        );
        invalid(&raw(0x83, 0, 0, 13, &[&[0]]), ErrorCode::BadFrame);
        invalid(&raw(0x84, 0, 0, 14, &[&[0; 7]]), ErrorCode::BadFrame);
        invalid(&raw(0x84, 0, 0, 14, &[&[0; 9]]), ErrorCode::BadFrame);
    }

    #[test]
    fn an_invalid_frame_waits_until_it_can_be_skipped_whole() {
        let bytes = raw(0x09, 0, 0, 1, &[&[0; 10]]);
        check(&bytes[..bytes.len() - 1], Expect::Incomplete);
    }

    #[test]
    fn frames_back_to_back_decode_one_after_the_other() {
        let mut buf = hello_bytes();
        buf.extend_from_slice(&msg_bytes());
        buf.extend_from_slice(&[0, 0, 0, 8]);
        let (first, n) = decode(&buf, LIMIT).unwrap().unwrap();
        assert_eq!(
            first,
            Frame::Hello {
                request_id: 7,
                version: 1,
                client_name: b"cli"
            }
        );
        let (second, m) = decode(&buf[n..], LIMIT).unwrap().unwrap();
        assert_eq!(second.opcode(), Opcode::Msg);
        assert_eq!(n + m, hello_bytes().len() + msg_bytes().len());
        assert_eq!(decode(&buf[n + m..], LIMIT), Ok(None));
    }

    #[test]
    fn msg_helpers_patch_a_shared_frame() {
        let mut frame = Vec::new();
        encode_msg_from_publish(
            &mut frame,
            1_700_000_000_123_456_789,
            (b"orders.eu", Some(b"inbox.7")),
            &[],
            b"{}",
        );
        assert_eq!(
            frame.len(),
            MSG_PREFIX_LEN + publish_body_len(b"orders.eu", Some(b"inbox.7"), &[], b"{}")
        );
        assert_eq!(msg_seq(&frame), 0);
        msg_set_seq(&mut frame, 41);
        msg_set_sub_id(&mut frame, 0xdead_beef);
        msg_set_delivery_count(&mut frame, 3);
        assert_eq!(msg_seq(&frame), 41);
        assert_eq!(msg_timestamp_ns(&frame), 1_700_000_000_123_456_789);
        assert_eq!(msg_topic(&frame), b"orders.eu");
        assert_eq!(msg_payload(&frame), b"{}");
        let expected = Frame::Msg {
            sub_id: 0xdead_beef,
            seq: 41,
            timestamp_ns: 1_700_000_000_123_456_789,
            delivery_count: 3,
            topic: b"orders.eu",
            reply_to: Some(b"inbox.7"),
            headers: &[],
            payload: b"{}",
        };
        assert_eq!(decode(&frame, LIMIT), Ok(Some((expected, frame.len()))));

        // The suffix after the prefix is the PUBLISH body, byte for byte.
        let mut publish = Vec::new();
        Frame::Publish {
            request_id: 0,
            quiet: false,
            topic: b"orders.eu",
            reply_to: Some(b"inbox.7"),
            headers: &[],
            payload: b"{}",
        }
        .encode(&mut publish);
        assert_eq!(frame[MSG_PREFIX_LEN..], publish[HEADER_LEN..]);

        let mut bare = Vec::new();
        encode_msg_from_publish(&mut bare, 0, (b"", None), &[], b"");
        assert_eq!(msg_topic(&bare), b"");
        assert_eq!(msg_payload(&bare), b"");
        assert!(matches!(
            decode(&bare, LIMIT),
            Ok(Some((
                Frame::Msg {
                    delivery_count: 1,
                    reply_to: None,
                    ..
                },
                _
            )))
        ));
    }

    #[test]
    fn overhead_bound_covers_the_largest_names() {
        let name = [b'x'; 255];
        let payload = [0u8; 10];
        let frames = [
            Frame::Publish {
                request_id: 0,
                quiet: false,
                topic: &name,
                reply_to: Some(&name),
                headers: &[],
                payload: &payload,
            },
            Frame::Msg {
                sub_id: 0,
                seq: 0,
                timestamp_ns: 0,
                delivery_count: 1,
                topic: &name,
                reply_to: Some(&name),
                headers: &[],
                payload: &payload,
            },
        ];
        let worst = frames.iter().map(|f| f.encoded_len() - payload.len()).max();
        assert_eq!(worst, Some(FRAME_OVERHEAD_MAX));
    }

    #[test]
    fn the_spec_lists_every_error_code() {
        let doc = include_str!("native.rs");
        for code in ErrorCode::ALL {
            let row = format!("//! | {:<4} | `{}`", code.as_u16(), code.as_str());
            assert!(doc.contains(&row), "error code table lacks {code}");
        }
    }

    #[test]
    fn opcodes_round_trip_through_their_byte() {
        for b in 0..=u8::MAX {
            if let Some(op) = Opcode::from_u8(b) {
                assert_eq!(op as u8, b);
            }
        }
        assert_eq!((0..=u8::MAX).filter_map(Opcode::from_u8).count(), 16);
    }

    /// Owned data for one frame, since a strategy cannot hand out borrowed slices.
    #[derive(Clone, Debug)]
    enum Owned {
        Hello(u32, u16, Vec<u8>),
        Publish(u32, bool, Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Subscribe(u32, u32, Vec<u8>, Vec<u8>),
        Unsubscribe(u32, u32),
        Ack(u32, u32, u64, u8, Vec<u8>),
        CreateTopic(u32, Vec<u8>, Vec<u8>),
        DeleteTopic(u32, Vec<u8>),
        Stats(u32, Vec<u8>),
        Ended(u32, u16, Vec<u8>),
        Ping(u32),
        Ok(u32, Vec<u8>),
        Err(u32, u16, Vec<u8>),
        Msg(u32, u64, u64, u16, Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Pong(u32),
        Dropped(u32, u64),
        Gap(u32, u64, u64, Vec<u8>),
    }

    impl Owned {
        fn frame(&self) -> Frame<'_> {
            match self {
                Owned::Hello(id, v, n) => Frame::Hello {
                    request_id: *id,
                    version: *v,
                    client_name: n,
                },
                Owned::Publish(id, q, t, r, p) => Frame::Publish {
                    request_id: *id,
                    quiet: *q,
                    topic: t,
                    reply_to: r.as_deref(),
                    headers: &[],
                    payload: p,
                },
                Owned::Subscribe(id, s, t, o) => Frame::Subscribe {
                    request_id: *id,
                    sub_id: *s,
                    topic: t,
                    options: o,
                },
                Owned::Unsubscribe(id, s) => Frame::Unsubscribe {
                    request_id: *id,
                    sub_id: *s,
                },
                Owned::Ack(id, s, seq, kind, topic) => Frame::Ack {
                    request_id: *id,
                    sub_id: *s,
                    seq: *seq,
                    kind: [AckKind::Single, AckKind::Cumulative, AckKind::Nack][*kind as usize % 3],
                    topic,
                },
                Owned::CreateTopic(id, t, o) => Frame::CreateTopic {
                    request_id: *id,
                    topic: t,
                    options: o,
                },
                Owned::DeleteTopic(id, t) => Frame::DeleteTopic {
                    request_id: *id,
                    topic: t,
                },
                Owned::Stats(id, t) => Frame::Stats {
                    request_id: *id,
                    topic: t,
                },
                Owned::Ended(id, c, m) => Frame::Ended {
                    sub_id: *id,
                    code: *c,
                    message: m,
                },
                Owned::Ping(id) => Frame::Ping { request_id: *id },
                Owned::Ok(id, d) => Frame::Ok {
                    request_id: *id,
                    data: d,
                },
                Owned::Err(id, c, m) => Frame::Err {
                    request_id: *id,
                    code: *c,
                    message: m,
                },
                Owned::Msg(id, s, ts, dc, t, r, p) => Frame::Msg {
                    sub_id: *id,
                    seq: *s,
                    timestamp_ns: *ts,
                    delivery_count: *dc,
                    topic: t,
                    reply_to: r.as_deref(),
                    headers: &[],
                    payload: p,
                },
                Owned::Pong(id) => Frame::Pong { request_id: *id },
                Owned::Dropped(id, c) => Frame::Dropped {
                    sub_id: *id,
                    count: *c,
                },
                Owned::Gap(id, missed, resume_seq, topic) => Frame::Gap {
                    topic,
                    sub_id: *id,
                    missed: *missed,
                    resume_seq: *resume_seq,
                },
            }
        }
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..=255)
    }

    /// `Some(empty)` is indistinguishable from `None` on the wire, so it is never generated.
    fn reply() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(vec(any::<u8>(), 1..=255))
    }

    fn bulk() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..4096)
    }

    fn owned() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (any::<u32>(), any::<u16>(), name()).prop_map(|(a, b, c)| Owned::Hello(a, b, c)),
            (any::<u32>(), any::<bool>(), name(), reply(), bulk())
                .prop_map(|(a, b, c, d, e)| Owned::Publish(a, b, c, d, e)),
            (any::<u32>(), any::<u32>(), name(), vec(any::<u8>(), 0..64))
                .prop_map(|(a, b, c, d)| Owned::Subscribe(a, b, c, d)),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Owned::Unsubscribe(a, b)),
            (any::<u32>(), any::<u32>(), any::<u64>(), 0u8..3).prop_map(|(a, b, c, d)| Owned::Ack(
                a,
                b,
                c,
                d,
                Vec::new()
            )),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                0u8..3,
                vec(any::<u8>(), 1..=255)
            )
                .prop_map(|(a, b, c, d, e)| Owned::Ack(a, b, c, d, e)),
            (any::<u32>(), name(), vec(any::<u8>(), 0..64))
                .prop_map(|(a, b, c)| Owned::CreateTopic(a, b, c)),
            (any::<u32>(), name()).prop_map(|(a, b)| Owned::DeleteTopic(a, b)),
            (any::<u32>(), vec(any::<u8>(), 0..=255)).prop_map(|(a, b)| Owned::Stats(a, b)),
            (any::<u32>(), any::<u16>(), vec(any::<u8>(), 0..64))
                .prop_map(|(a, b, c)| Owned::Ended(a, b, c)),
            any::<u32>().prop_map(Owned::Ping),
            (any::<u32>(), vec(any::<u8>(), 0..64)).prop_map(|(a, b)| Owned::Ok(a, b)),
            (any::<u32>(), any::<u16>(), vec(any::<u8>(), 0..256))
                .prop_map(|(a, b, c)| Owned::Err(a, b, c)),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u16>(),
                name(),
                reply(),
                bulk()
            )
                .prop_map(|(a, b, c, d, e, f, g)| Owned::Msg(a, b, c, d, e, f, g)),
            any::<u32>().prop_map(Owned::Pong),
            (any::<u32>(), any::<u64>()).prop_map(|(a, b)| Owned::Dropped(a, b)),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| Owned::Gap(
                a,
                b,
                c,
                Vec::new()
            )),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                vec(any::<u8>(), 1..=255)
            )
                .prop_map(|(a, b, c, d)| Owned::Gap(a, b, c, d)),
        ]
    }

    /// Frame limit large enough for every generated frame.
    const PROP_LIMIT: usize = 4096 + FRAME_OVERHEAD_MAX;

    proptest! {
        #[test]
        fn the_msg_head_encoder_writes_what_the_general_one_does(
            topic in vec(any::<u8>(), 1..40),
            reply_to in proptest::option::of(vec(any::<u8>(), 0..20)),
            headers in vec(any::<u8>(), 0..3).prop_flat_map(|seed| {
                vec(any::<u8>(), if seed.is_empty() { 0..1 } else { 1..30 })
            }),
            payload in vec(any::<u8>(), 0..100),
            timestamp_ns in any::<u64>(),
        ) {
            let mut general = vec![0xaa];
            let parts = (&topic[..], reply_to.as_deref());
            encode_msg_from_publish(&mut general, timestamp_ns, parts, &headers, &payload);
            let len = msg_from_publish_len(parts, &headers, payload.len()).expect("fits");
            let mut direct = vec![MaybeUninit::new(0xaa_u8); len];
            write_msg_from_publish(&mut direct, timestamp_ns, parts, &headers, &payload)
                .expect("the length it asked for");
            let direct: Vec<u8> = direct.iter().map(|byte| unsafe { byte.assume_init() }).collect();
            prop_assert_eq!(&direct[..], &general[1..]);
            // Any other length is refused rather than overrun.
            let mut short = vec![MaybeUninit::new(0_u8); len - 1];
            prop_assert!(write_msg_from_publish(&mut short, timestamp_ns, parts, &headers, &payload).is_none());
        }

        #[test]
        fn encode_then_decode_round_trips(owned in owned()) {
            let frame = owned.frame();
            let mut out = vec![0xaa];
            frame.encode(&mut out);
            prop_assert_eq!(out.len() - 1, frame.encoded_len());
            prop_assert_eq!(decode(&out[1..], PROP_LIMIT), Ok(Some((frame, frame.encoded_len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in vec(any::<u8>(), 0..2048), limit in 0usize..4096) {
            match decode(&buf, limit) {
                Ok(Some((_, n))) => prop_assert!(n <= buf.len() && n <= limit),
                Err(DecodeError::Invalid { frame_len, .. }) => prop_assert!(frame_len <= buf.len()),
                Ok(None) | Err(DecodeError::Fatal { .. }) => {}
            }
        }

        #[test]
        fn arbitrary_bodies_after_a_valid_header_never_panic(
            opcode in prop_oneof![
                proptest::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86]),
                any::<u8>(),
            ],
            flags in prop_oneof![Just(0u8), Just(PUBLISH_QUIET), any::<u8>()],
            body in vec(any::<u8>(), 0..600),
            extra in vec(any::<u8>(), 0..16),
        ) {
            let mut buf = raw(opcode, flags, 0, 1, &[&body]);
            let frame_len = buf.len();
            buf.extend_from_slice(&extra);
            match decode(&buf, PROP_LIMIT) {
                Ok(Some((frame, n))) => {
                    prop_assert_eq!(n, frame_len);
                    prop_assert_eq!(frame.opcode() as u8, opcode);
                }
                Err(DecodeError::Invalid { request_id, frame_len: n, .. }) => {
                    prop_assert_eq!((request_id, n), (1, frame_len));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn concatenated_frames_decode_in_order(frames in vec(owned(), 0..12)) {
            let mut buf = Vec::new();
            for f in &frames {
                f.frame().encode(&mut buf);
            }
            let mut at = 0;
            for f in &frames {
                let (got, n) = decode(&buf[at..], PROP_LIMIT).unwrap().unwrap();
                prop_assert_eq!(got, f.frame());
                at += n;
            }
            prop_assert_eq!(at, buf.len());
            prop_assert_eq!(decode(&buf[at..], PROP_LIMIT), Ok(None));
        }
    }
}
