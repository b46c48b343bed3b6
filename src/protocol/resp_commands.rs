//! The Redis commands the RESP listener answers, as data: names, arities, subcommands, which
//! may run in RESP2 subscribed mode, and Redis's exact error texts, with the pure checks Redis
//! runs before a command executes ([`resolve`]).
//!
//! Kept apart from the codec ([`crate::protocol::resp`]) and from the shard, which maps a
//! resolved [`CommandId`] to broker work: clients recognise Redis by its error texts (some
//! match on them), so the texts live in one table checked against Redis's source
//! (`server.c`, `networking.c`, `db.c`, `commands.def` of Redis 7.x), and a test pins each.
//!
//! Arity follows Redis: a positive arity is the exact argument count, the command name
//! included; a negative one is a minimum. For a subcommand the count includes the container
//! (`CLIENT SETNAME name` is 3).

use crate::protocol::resp::Request;

/// What the connection should run. One variant per (command, subcommand) in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandId {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
    Publish,
    SPublish,
    Ping,
    Echo,
    Hello,
    Select,
    Quit,
    Reset,
    Info,
    FlushDb,
    FlushAll,
    /// `COMMAND` alone: every command's description.
    Command,
    CommandCount,
    CommandDocs,
    CommandInfo,
    CommandHelp,
    PubSubChannels,
    PubSubNumSub,
    PubSubNumPat,
    PubSubShardChannels,
    PubSubShardNumSub,
    PubSubHelp,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientSetInfo,
    ClientList,
    ClientKill,
    ClientInfo,
    ClientHelp,
    ConfigGet,
    ConfigHelp,
}

/// One command or subcommand, as Redis declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub id: CommandId,
    /// Lowercase; `container|sub` for subcommands, as Redis names them in errors.
    pub full_name: &'static str,
    pub arity: i32,
    /// Allowed while a RESP2 connection is subscribed. (RESP3 connections may run anything.)
    pub allowed_in_resp2_subscribed: bool,
}

impl CommandSpec {
    /// Does a request of `argc` arguments (name included) satisfy the arity?
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity >= 0 {
            argc == arity
        } else {
            argc >= arity
        }
    }
}

/// A top-level command: either runnable itself, or a container of subcommands, or both
/// (`COMMAND`).
#[derive(Clone, Copy, Debug)]
pub struct TopLevel {
    pub name: &'static str,
    /// What runs when the name is sent alone or the command has no subcommands. A container
    /// without a body of its own (`CLIENT`, `PUBSUB`, `CONFIG`) still has Redis's arity of
    /// -2, checked when it is sent alone, so its `id` (the container's HELP) never resolves.
    pub spec: CommandSpec,
    pub subcommands: &'static [CommandSpec],
}

const fn spec(id: CommandId, full_name: &'static str, arity: i32) -> CommandSpec {
    CommandSpec {
        id,
        full_name,
        arity,
        allowed_in_resp2_subscribed: false,
    }
}

/// Allowed in RESP2 subscribed mode: Redis's list (`processCommand`).
const fn subscribed_ok(id: CommandId, full_name: &'static str, arity: i32) -> CommandSpec {
    CommandSpec {
        id,
        full_name,
        arity,
        allowed_in_resp2_subscribed: true,
    }
}

const fn command(name: &'static str, spec: CommandSpec) -> TopLevel {
    TopLevel {
        name,
        spec,
        subcommands: &[],
    }
}

const fn container(
    name: &'static str,
    spec: CommandSpec,
    subcommands: &'static [CommandSpec],
) -> TopLevel {
    TopLevel {
        name,
        spec,
        subcommands,
    }
}

use CommandId as C;

/// PUBLISH's name as CLIENT LIST's `cmd=` shows it, for the publish fast path, which skips the
/// table.
pub const PUBLISH_NAME: &str = "publish";

/// Every command corebus answers, with Redis 7.2's arities (`commands.def`). Lookup is a
/// linear scan, so the hottest command comes first.
pub const COMMANDS: &[TopLevel] = &[
    command(PUBLISH_NAME, spec(C::Publish, PUBLISH_NAME, 3)),
    command("subscribe", subscribed_ok(C::Subscribe, "subscribe", -2)),
    command(
        "unsubscribe",
        subscribed_ok(C::Unsubscribe, "unsubscribe", -1),
    ),
    command("psubscribe", subscribed_ok(C::PSubscribe, "psubscribe", -2)),
    command(
        "punsubscribe",
        subscribed_ok(C::PUnsubscribe, "punsubscribe", -1),
    ),
    command("ssubscribe", subscribed_ok(C::SSubscribe, "ssubscribe", -2)),
    command(
        "sunsubscribe",
        subscribed_ok(C::SUnsubscribe, "sunsubscribe", -1),
    ),
    command("spublish", spec(C::SPublish, "spublish", 3)),
    command("ping", subscribed_ok(C::Ping, "ping", -1)),
    command("echo", spec(C::Echo, "echo", 2)),
    command("hello", spec(C::Hello, "hello", -1)),
    command("select", spec(C::Select, "select", 2)),
    command("quit", subscribed_ok(C::Quit, "quit", -1)),
    command("reset", subscribed_ok(C::Reset, "reset", 1)),
    command("info", spec(C::Info, "info", -1)),
    command("flushdb", spec(C::FlushDb, "flushdb", -1)),
    command("flushall", spec(C::FlushAll, "flushall", -1)),
    container(
        "command",
        spec(C::Command, "command", -1),
        &[
            spec(C::CommandCount, "command|count", 2),
            spec(C::CommandDocs, "command|docs", -2),
            spec(C::CommandInfo, "command|info", -2),
            spec(C::CommandHelp, "command|help", 2),
        ],
    ),
    container(
        "pubsub",
        spec(C::PubSubHelp, "pubsub", -2),
        &[
            spec(C::PubSubChannels, "pubsub|channels", -2),
            spec(C::PubSubNumSub, "pubsub|numsub", -2),
            spec(C::PubSubNumPat, "pubsub|numpat", 2),
            spec(C::PubSubShardChannels, "pubsub|shardchannels", -2),
            spec(C::PubSubShardNumSub, "pubsub|shardnumsub", -2),
            spec(C::PubSubHelp, "pubsub|help", 2),
        ],
    ),
    container(
        "client",
        spec(C::ClientHelp, "client", -2),
        &[
            spec(C::ClientSetName, "client|setname", 3),
            spec(C::ClientGetName, "client|getname", 2),
            spec(C::ClientId, "client|id", 2),
            spec(C::ClientSetInfo, "client|setinfo", 4),
            spec(C::ClientList, "client|list", -2),
            spec(C::ClientKill, "client|kill", -3),
            spec(C::ClientInfo, "client|info", 2),
            spec(C::ClientHelp, "client|help", 2),
        ],
    ),
    container(
        "config",
        spec(C::ConfigHelp, "config", -2),
        &[
            spec(C::ConfigGet, "config|get", -3),
            spec(C::ConfigHelp, "config|help", 2),
        ],
    ),
];

/// Redis's error texts, without the `-ERR ` that [`crate::protocol::resp::encode_error`] adds
/// (texts with their own code start with `-`).
pub mod errors {
    /// `SELECT n` for any n but 0 (`db.c`).
    pub const DB_INDEX_OUT_OF_RANGE: &str = "DB index is out of range";
    /// An argument that must be an integer is not (`object.c`).
    pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";
    /// `shared.syntaxerr`.
    pub const SYNTAX_ERROR: &str = "syntax error";
    /// HELLO with a version other than 2 or 3.
    pub const HELLO_NOPROTO: &str = "-NOPROTO unsupported protocol version";
    /// HELLO with a version that is not an integer.
    pub const HELLO_PROTO_NOT_INTEGER: &str = "Protocol version is not an integer or out of range";
    /// CLIENT SETNAME / HELLO SETNAME with a byte outside `!`..=`~`.
    pub const CLIENT_NAME_INVALID: &str =
        "Client names cannot contain spaces, newlines or special characters.";
    /// CLIENT SETNAME / HELLO SETNAME with a name above
    /// [`crate::protocol::CLIENT_NAME_BYTES_MAX`] (corebus's bound; Redis has none).
    pub const CLIENT_NAME_TOO_LONG: &str = "Client names are at most 255 bytes.";
    /// `CLIENT KILL addr:port` that found no client (the filter form answers `:0` instead).
    pub const NO_SUCH_CLIENT: &str = "No such client";
    /// `CLIENT KILL ID n` with n not a positive integer.
    pub const CLIENT_ID_NOT_POSITIVE: &str = "client-id should be greater than 0";
}

/// What `CLIENT KILL` asks for, read as Redis 7.2 reads it (`networking.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillRequest {
    /// `CLIENT KILL addr:port`: `+OK`, or an error when no client has that address.
    Address(Box<[u8]>),
    /// `CLIENT KILL <filter> <value> ...`: the number of clients closed.
    Filters(KillFilter),
}

/// The filters of `CLIENT KILL`'s newer form; a client must match every one given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub kind: Option<ClientKind>,
    pub addr: Option<Box<[u8]>>,
    pub laddr: Option<Box<[u8]>>,
    /// `SKIPME yes` (the default): the client asking is never closed by its own request.
    pub skip_me: bool,
}

impl KillFilter {
    /// The address form as a filter: any client with that address, the asker included.
    pub fn address(addr: &[u8]) -> KillFilter {
        KillFilter {
            id: None,
            kind: None,
            addr: Some(addr.into()),
            laddr: None,
            skip_me: false,
        }
    }
}

/// `CLIENT KILL TYPE`'s kinds. corebus has no replication, so `master`, `replica` and
/// `slave` are known names that match no client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    Normal,
    PubSub,
    Replication,
}

/// Reads `CLIENT KILL`'s arguments after `KILL`; the error is Redis's text for the reply.
pub fn parse_client_kill(args: &[&[u8]]) -> Result<KillRequest, String> {
    match args {
        [] => Err(errors::SYNTAX_ERROR.into()),
        [addr] => Ok(KillRequest::Address((*addr).into())),
        _ => {
            let mut filter = KillFilter {
                id: None,
                kind: None,
                addr: None,
                laddr: None,
                skip_me: true,
            };
            let mut pairs = args.chunks(2);
            for pair in &mut pairs {
                let [name, value] = pair else {
                    // A filter name with no value.
                    return Err(errors::SYNTAX_ERROR.into());
                };
                let value = *value;
                let text = || String::from_utf8_lossy(value).into_owned();
                match name.to_ascii_lowercase().as_slice() {
                    b"id" => {
                        let id = crate::protocol::resp::parse_redis_integer(value)
                            .filter(|&id| id >= 1)
                            .ok_or_else(|| errors::CLIENT_ID_NOT_POSITIVE.to_owned())?;
                        filter.id = Some(id as u64);
                    }
                    b"type" => {
                        filter.kind = Some(match value.to_ascii_lowercase().as_slice() {
                            b"normal" => ClientKind::Normal,
                            b"pubsub" => ClientKind::PubSub,
                            b"master" | b"replica" | b"slave" => ClientKind::Replication,
                            _ => return Err(format!("Unknown client type '{}'", text())),
                        });
                    }
                    b"addr" => filter.addr = Some(value.into()),
                    b"laddr" => filter.laddr = Some(value.into()),
                    // Only the default user exists (no ACLs): it is every client.
                    b"user" if value == b"default" => {}
                    b"user" => return Err(format!("No such user '{}'", text())),
                    b"skipme" => {
                        filter.skip_me = match value.to_ascii_lowercase().as_slice() {
                            b"yes" => true,
                            b"no" => false,
                            _ => return Err(errors::SYNTAX_ERROR.into()),
                        };
                    }
                    _ => return Err(errors::SYNTAX_ERROR.into()),
                }
            }
            Ok(KillRequest::Filters(filter))
        }
    }
}

/// A request's arguments, the command name first: a decoded [`Request`] (no copy) or a slice
/// (tests, tools).
pub trait ArgList {
    fn arg_count(&self) -> usize;
    fn arg_at(&self, index: usize) -> Option<&[u8]>;
}

impl ArgList for [&[u8]] {
    fn arg_count(&self) -> usize {
        self.len()
    }

    fn arg_at(&self, index: usize) -> Option<&[u8]> {
        self.get(index).copied()
    }
}

impl ArgList for Request<'_> {
    fn arg_count(&self) -> usize {
        self.len()
    }

    fn arg_at(&self, index: usize) -> Option<&[u8]> {
        self.arg(index)
    }
}

/// A byte string as C's `%.<max>s` prints it: up to the first NUL, at most `max` bytes.
fn c_string(bytes: &[u8], max: usize) -> &[u8] {
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len())
        .min(max);
    &bytes[..end]
}

/// `unknown command 'foo', with args beginning with: 'a' 'b' ` (the trailing space is
/// Redis's): the name cut to 128 bytes, then quoted arguments until the list reaches 128
/// bytes, each cut to what is left of the 128.
pub fn unknown_command_error<A: ArgList + ?Sized>(args: &A) -> Vec<u8> {
    let name = args.arg_at(0).unwrap_or_default();
    let mut listed = Vec::new();
    for arg in (1..args.arg_count()).filter_map(|index| args.arg_at(index)) {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push(b'\'');
        listed.extend_from_slice(c_string(arg, room));
        listed.extend_from_slice(b"' ");
    }
    let mut text = b"unknown command '".to_vec();
    text.extend_from_slice(c_string(name, 128));
    text.extend_from_slice(b"', with args beginning with: ");
    text.extend_from_slice(&listed);
    text
}

/// `unknown subcommand 'foo'. Try CLIENT HELP.`: the container name as sent, uppercased.
pub fn unknown_subcommand_error(container: &[u8], subcommand: &[u8]) -> Vec<u8> {
    let mut text = b"unknown subcommand '".to_vec();
    text.extend_from_slice(c_string(subcommand, 128));
    text.extend_from_slice(b"'. Try ");
    text.extend(c_string(container, usize::MAX).to_ascii_uppercase());
    text.extend_from_slice(b" HELP.");
    text
}

/// `unknown subcommand or wrong number of arguments for 'foo'. Try CLIENT HELP.`: what a
/// container answers when its arguments make no sense (Redis's `addReplySubcommandSyntaxError`).
pub fn subcommand_syntax_error(container: &[u8], subcommand: &[u8]) -> Vec<u8> {
    let mut text = b"unknown subcommand or wrong number of arguments for '".to_vec();
    text.extend_from_slice(c_string(subcommand, 128));
    text.extend_from_slice(b"'. Try ");
    text.extend(c_string(container, usize::MAX).to_ascii_uppercase());
    text.extend_from_slice(b" HELP.");
    text
}

/// `wrong number of arguments for 'subscribe' command` (subcommands: `'client|setname'`).
pub fn wrong_arity_error(full_name: &str) -> String {
    format!("wrong number of arguments for '{full_name}' command")
}

/// What a RESP2 subscribed connection gets for any other command.
pub fn subscribed_context_error(full_name: &str) -> String {
    format!(
        "Can't execute '{full_name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
         RESET are allowed in this context"
    )
}

/// `Syntax error in HELLO option 'foo'`.
pub fn hello_option_error(option: &[u8]) -> Vec<u8> {
    let mut text = b"Syntax error in HELLO option '".to_vec();
    text.extend_from_slice(c_string(option, usize::MAX));
    text.push(b'\'');
    text
}

/// `Unrecognized option 'foo'` (CLIENT SETINFO with an attribute other than `lib-name` or
/// `lib-ver`).
pub fn setinfo_option_error(attribute: &[u8]) -> Vec<u8> {
    let mut text = b"Unrecognized option '".to_vec();
    text.extend_from_slice(c_string(attribute, usize::MAX));
    text.push(b'\'');
    text
}

/// `lib-name cannot contain spaces, newlines or special characters.` (the attribute as sent).
pub fn setinfo_value_error(attribute: &[u8]) -> Vec<u8> {
    let mut text = c_string(attribute, usize::MAX).to_vec();
    text.extend_from_slice(b" cannot contain spaces, newlines or special characters.");
    text
}

/// Redis's rule for client names and `CLIENT SETINFO` values: empty, or only bytes `!`..=`~`.
/// (Redis reads them as C strings, so it stops at a NUL; a NUL is refused here instead.)
pub fn client_attribute_ok(value: &[u8]) -> bool {
    value.iter().all(|&byte| (b'!'..=b'~').contains(&byte))
}

/// What is wrong with a client name for `CLIENT SETNAME` or `HELLO ... SETNAME`, if anything:
/// Redis's character rule, then corebus's length bound (the name rides in presence events).
pub fn client_name_error(name: &[u8]) -> Option<&'static str> {
    if !client_attribute_ok(name) {
        Some(errors::CLIENT_NAME_INVALID)
    } else if name.len() > super::CLIENT_NAME_BYTES_MAX {
        Some(errors::CLIENT_NAME_TOO_LONG)
    } else {
        None
    }
}

/// Requests named `POST` or `Host:` (any case) are HTTP sent to the Redis port, the mark of a
/// cross-protocol attack: Redis closes the connection without a reply, before any lookup.
pub fn is_cross_protocol_attack(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:")
}

/// `SELECT db`: only database 0 exists.
pub fn select_database(argument: &[u8]) -> Result<(), &'static str> {
    match crate::protocol::resp::parse_redis_integer(argument) {
        Some(0) => Ok(()),
        Some(index) if i32::try_from(index).is_ok() => Err(errors::DB_INDEX_OUT_OF_RANGE),
        _ => Err(errors::NOT_AN_INTEGER),
    }
}

fn find_top_level(name: &[u8]) -> Option<&'static TopLevel> {
    COMMANDS
        .iter()
        .find(|command| command.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Finds the command a request names, as Redis's `lookupCommand` does: a container sent with
/// at least one more argument names the subcommand; sent alone, the container itself.
pub fn lookup<A: ArgList + ?Sized>(args: &A) -> Option<&'static CommandSpec> {
    let top = find_top_level(args.arg_at(0)?)?;
    match args.arg_at(1) {
        Some(sub) if !top.subcommands.is_empty() => top
            .subcommands
            .iter()
            .find(|spec| subcommand_name(spec).eq_ignore_ascii_case(sub)),
        _ => Some(&top.spec),
    }
}

fn subcommand_name(spec: &CommandSpec) -> &[u8] {
    let name = spec.full_name.as_bytes();
    match name.iter().position(|&byte| byte == b'|') {
        Some(bar) => &name[bar + 1..],
        None => name,
    }
}

/// Why a request may not run. `Close` means: close without replying (Redis's answer to HTTP);
/// `Error` holds the text for [`crate::protocol::resp::encode_error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Close,
    Error(Vec<u8>),
}

/// Redis's checks before running a command, in Redis's order: the cross-protocol guard, then
/// existence (unknown command or subcommand), arity, the RESP2 subscribed-mode restriction,
/// and last PING's own limit of one argument. `args` must not be empty (an empty request is skipped before this).
///
/// A command Redis knows but corebus does not (GET, say) is an unknown command here, except in
/// RESP2 subscribed mode, where it gets the subscribed-mode error naming it, as in Redis
/// (which knows almost every command, so there the mode is what refuses it).
pub fn resolve<A: ArgList + ?Sized>(
    args: &A,
    resp2_subscribed: bool,
) -> Result<&'static CommandSpec, Refusal> {
    let name = args.arg_at(0).unwrap_or_default();
    if is_cross_protocol_attack(name) {
        return Err(Refusal::Close);
    }
    let Some(spec) = lookup(args) else {
        if resp2_subscribed {
            // Redis knows almost every command, so there it is the mode that refuses it. The
            // name is client bytes: cut as the unknown-command text cuts its arguments.
            let shown = &name[..name.len().min(128)];
            let name = String::from_utf8_lossy(&shown.to_ascii_lowercase()).into_owned();
            return Err(Refusal::Error(subscribed_context_error(&name).into_bytes()));
        }
        let sub = args.arg_at(1).unwrap_or_default();
        return Err(Refusal::Error(match find_top_level(name) {
            Some(top) if !top.subcommands.is_empty() => unknown_subcommand_error(name, sub),
            _ => unknown_command_error(args),
        }));
    };
    if !spec.arity_ok(args.arg_count()) {
        return Err(Refusal::Error(
            wrong_arity_error(spec.full_name).into_bytes(),
        ));
    }
    if resp2_subscribed && !spec.allowed_in_resp2_subscribed {
        return Err(Refusal::Error(
            subscribed_context_error(spec.full_name).into_bytes(),
        ));
    }
    // PING declares "at least one" but refuses more than two itself, with the arity text.
    if spec.id == CommandId::Ping && args.arg_count() > 2 {
        return Err(Refusal::Error(
            wrong_arity_error(spec.full_name).into_bytes(),
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_kill_reads_as_redis_7_2_does() {
        let kill = |args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
            parse_client_kill(&args)
        };
        assert_eq!(
            kill(&["1.2.3.4:5"]),
            Ok(KillRequest::Address(b"1.2.3.4:5"[..].into()))
        );
        let Ok(KillRequest::Filters(filter)) = kill(&[
            "ID", "7", "type", "PubSub", "SKIPME", "no", "user", "default",
        ]) else {
            panic!("filters");
        };
        assert_eq!(filter.id, Some(7));
        assert_eq!(filter.kind, Some(ClientKind::PubSub));
        assert!(!filter.skip_me);
        let Ok(KillRequest::Filters(filter)) = kill(&["addr", "1.2.3.4:5", "laddr", "x"]) else {
            panic!("filters");
        };
        assert!(filter.skip_me, "SKIPME yes is the default");
        assert_eq!(filter.addr.as_deref(), Some(&b"1.2.3.4:5"[..]));
        for id in ["0", "-1", "x", "1.5", ""] {
            assert_eq!(
                kill(&["ID", id]),
                Err(errors::CLIENT_ID_NOT_POSITIVE.into()),
                "{id:?}"
            );
        }
        assert_eq!(
            kill(&["TYPE", "robot"]),
            Err("Unknown client type 'robot'".into())
        );
        assert_eq!(kill(&["USER", "bob"]), Err("No such user 'bob'".into()));
        for bad in [
            &[][..],
            &["ID", "1", "TYPE"][..],
            &["SKIPME", "maybe"][..],
            &["MAXAGE", "3"][..],
            &["NOSUCH", "x"][..],
        ] {
            assert_eq!(kill(bad), Err(errors::SYNTAX_ERROR.into()), "{bad:?}");
        }
    }
    use crate::protocol::resp::encode_error;

    fn wire(text: &[u8]) -> String {
        let mut out = Vec::new();
        encode_error(&mut out, text);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn resolved(args: &[&str], subscribed: bool) -> Result<CommandId, String> {
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        match resolve(args.as_slice(), subscribed) {
            Ok(spec) => Ok(spec.id),
            Err(Refusal::Close) => Err("<close>".to_owned()),
            Err(Refusal::Error(text)) => Err(wire(&text)),
        }
    }

    #[test]
    fn commands_resolve_case_insensitively() {
        let cases: &[(&[&str], CommandId)] = &[
            (&["SUBSCRIBE", "a"], C::Subscribe),
            (&["subscribe", "a", "b"], C::Subscribe),
            (&["UnSubscribe"], C::Unsubscribe),
            (&["PING"], C::Ping),
            (&["ping", "x"], C::Ping),
            (&["PUBLISH", "c", "m"], C::Publish),
            (&["HELLO"], C::Hello),
            (&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"], C::Hello),
            (&["COMMAND"], C::Command),
            (&["command", "docs"], C::CommandDocs),
            (&["COMMAND", "COUNT"], C::CommandCount),
            (
                &["client", "SetInfo", "lib-name", "redis-py"],
                C::ClientSetInfo,
            ),
            (&["CLIENT", "KILL", "ID", "7"], C::ClientKill),
            (&["PUBSUB", "NUMPAT"], C::PubSubNumPat),
            (&["pubsub", "channels", "news*"], C::PubSubChannels),
            (&["CONFIG", "GET", "save"], C::ConfigGet),
            (&["SELECT", "0"], C::Select),
            (&["RESET"], C::Reset),
        ];
        for &(args, id) in cases {
            assert_eq!(resolved(args, false), Ok(id), "{args:?}");
        }
    }

    #[test]
    fn refusals_have_redis_texts() {
        let cases: &[(&[&str], bool, &str)] = &[
            (
                &["foo", "a", "b"],
                false,
                "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
            ),
            (&["foo"], false, "-ERR unknown command 'foo', with args beginning with: \r\n"),
            (
                &["subscribe"],
                false,
                "-ERR wrong number of arguments for 'subscribe' command\r\n",
            ),
            (
                &["PUBLISH", "c"],
                false,
                "-ERR wrong number of arguments for 'publish' command\r\n",
            ),
            (
                &["RESET", "x"],
                false,
                "-ERR wrong number of arguments for 'reset' command\r\n",
            ),
            (
                &["CLIENT"],
                false,
                "-ERR wrong number of arguments for 'client' command\r\n",
            ),
            (
                &["client", "setname"],
                false,
                "-ERR wrong number of arguments for 'client|setname' command\r\n",
            ),
            (
                &["client", "pause", "10"],
                false,
                "-ERR unknown subcommand 'pause'. Try CLIENT HELP.\r\n",
            ),
            (
                &["pubsub", "nope"],
                false,
                "-ERR unknown subcommand 'nope'. Try PUBSUB HELP.\r\n",
            ),
            (
                &["get", "k"],
                false,
                "-ERR unknown command 'get', with args beginning with: 'k' \r\n",
            ),
            (
                &["ECHO", "x"],
                true,
                "-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
            ),
            (
                &["client", "id"],
                true,
                "-ERR Can't execute 'client|id': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
            ),
            // Arity is checked before the subscribed-mode restriction, as in Redis.
            (
                &["PUBLISH"],
                true,
                "-ERR wrong number of arguments for 'publish' command\r\n",
            ),
            (
                &["PING", "a", "b"],
                true,
                "-ERR wrong number of arguments for 'ping' command\r\n",
            ),
            // A data command Redis knows: refused by the mode, named in lowercase.
            (
                &["SET", "k", "v"],
                true,
                "-ERR Can't execute 'set': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
            ),
            (&["POST", "/", "HTTP/1.1"], false, "<close>"),
            (&["Host:", "x"], true, "<close>"),
            // Newlines in quoted client bytes cannot break the reply.
            (
                &["a\r\nb", "c\nd"],
                false,
                "-ERR unknown command 'a  b', with args beginning with: 'c d' \r\n",
            ),
        ];
        for &(args, subscribed, expected) in cases {
            assert_eq!(
                resolved(args, subscribed),
                Err(expected.to_owned()),
                "{args:?}"
            );
        }
        for allowed in [
            &["PING"][..],
            &["SUBSCRIBE", "a"],
            &["SSUBSCRIBE", "a"],
            &["UNSUBSCRIBE"],
            &["SUNSUBSCRIBE"],
            &["PSUBSCRIBE", "a*"],
            &["PUNSUBSCRIBE"],
            &["QUIT"],
            &["RESET"],
        ] {
            assert!(resolved(allowed, true).is_ok(), "{allowed:?}");
        }
    }

    #[test]
    fn unknown_command_lists_at_most_128_bytes() {
        let long = "x".repeat(300);
        let text = unknown_command_error(&[long.as_bytes(), b"a", b"b"][..]);
        let expected = format!(
            "unknown command '{}', with args beginning with: 'a' 'b' ",
            "x".repeat(128)
        );
        assert_eq!(String::from_utf8_lossy(&text), expected);

        let args: [&[u8]; 4] = [b"foo", long.as_bytes(), b"b", b"c"];
        let text = unknown_command_error(&args[..]);
        let expected = format!(
            "unknown command 'foo', with args beginning with: '{}' ",
            "x".repeat(128)
        );
        assert_eq!(String::from_utf8_lossy(&text), expected);

        let hundred = "y".repeat(100);
        let args: [&[u8]; 3] = [b"foo", hundred.as_bytes(), long.as_bytes()];
        let text = unknown_command_error(&args[..]);
        // 103 bytes listed after the first argument, so the second gets 25.
        let expected = format!(
            "unknown command 'foo', with args beginning with: '{hundred}' '{}' ",
            "x".repeat(25)
        );
        assert_eq!(String::from_utf8_lossy(&text), expected);

        // C strings end at NUL.
        let text = unknown_command_error(&[&b"fo\x00o"[..], b"a\x00b"][..]);
        assert_eq!(
            text,
            b"unknown command 'fo', with args beginning with: 'a' "
        );
    }

    #[test]
    fn other_texts() {
        assert_eq!(
            wire(errors::DB_INDEX_OUT_OF_RANGE.as_bytes()),
            "-ERR DB index is out of range\r\n"
        );
        assert_eq!(
            wire(errors::HELLO_NOPROTO.as_bytes()),
            "-NOPROTO unsupported protocol version\r\n"
        );
        assert_eq!(
            wire(&hello_option_error(b"FOO")),
            "-ERR Syntax error in HELLO option 'FOO'\r\n"
        );
        assert_eq!(
            wire(&subcommand_syntax_error(b"client", b"kill")),
            "-ERR unknown subcommand or wrong number of arguments for 'kill'. Try CLIENT HELP.\r\n"
        );
        assert_eq!(
            wire(&setinfo_option_error(b"x")),
            "-ERR Unrecognized option 'x'\r\n"
        );
        assert_eq!(
            wire(&setinfo_value_error(b"lib-name")),
            "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
        );
        assert!(client_attribute_ok(b""));
        assert!(client_attribute_ok(b"redis-py"));
        assert!(!client_attribute_ok(b"a b"));
        assert!(!client_attribute_ok(b"a\x7f"));
        let longest = vec![b'n'; crate::protocol::CLIENT_NAME_BYTES_MAX];
        assert_eq!(client_name_error(&longest), None);
        assert_eq!(
            client_name_error(&[&longest[..], b"n"].concat()),
            Some(errors::CLIENT_NAME_TOO_LONG)
        );
        assert!(errors::CLIENT_NAME_TOO_LONG
            .contains(&crate::protocol::CLIENT_NAME_BYTES_MAX.to_string()));
        assert_eq!(client_name_error(b"a b"), Some(errors::CLIENT_NAME_INVALID));
        assert_eq!(select_database(b"0"), Ok(()));
        assert_eq!(select_database(b"1"), Err(errors::DB_INDEX_OUT_OF_RANGE));
        assert_eq!(select_database(b"-1"), Err(errors::DB_INDEX_OUT_OF_RANGE));
        assert_eq!(select_database(b"x"), Err(errors::NOT_AN_INTEGER));
        assert_eq!(select_database(b"2147483648"), Err(errors::NOT_AN_INTEGER));
        assert_eq!(select_database(b"00"), Err(errors::NOT_AN_INTEGER));
    }

    #[test]
    fn table_is_consistent() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|command| command.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
        for command in COMMANDS {
            assert_eq!(command.name, command.name.to_ascii_lowercase());
            for sub in command.subcommands {
                assert!(sub.full_name.starts_with(&format!("{}|", command.name)));
                assert!(!sub.allowed_in_resp2_subscribed);
            }
        }
        let allowed: Vec<&str> = COMMANDS
            .iter()
            .filter(|command| command.spec.allowed_in_resp2_subscribed)
            .map(|command| command.name)
            .collect();
        assert_eq!(
            allowed,
            [
                "subscribe",
                "unsubscribe",
                "psubscribe",
                "punsubscribe",
                "ssubscribe",
                "sunsubscribe",
                "ping",
                "quit",
                "reset"
            ]
        );
    }
}
