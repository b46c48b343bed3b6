//! The real `corebus` binary: `serve` announces itself with one ready line, `sub` and `pub`
//! talk to it, SIGTERM and SIGINT stop it cleanly, bad flags are refused with a message that
//! names them, `COREBUS_*` variables configure it (flags win), and `pub` without a broker
//! fails loudly.
//!
//! Every child runs inside a guard that kills it on drop, so a failing assertion never
//! leaves a broker behind; every read from a child and every wait for one has a timeout.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use corebus::client::{Client, Error};
use corebus::error::ErrorCode;

const BIN: &str = env!("CARGO_BIN_EXE_corebus");
/// Any single step: a line to appear, a child to exit.
const WAIT: Duration = Duration::from_secs(10);
/// How long a signalled broker may take to exit.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// `corebus ARGS`, with no `COREBUS_*` variable leaking in from the test's environment.
fn corebus(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COREBUS_") {
            command.env_remove(key);
        }
    }
    // Tests run side by side: none may take the default HTTP or RESP port.
    command.env("COREBUS_HTTP_LISTEN", "127.0.0.1:0");
    command.env("COREBUS_RESP_LISTEN", "127.0.0.1:0");
    command
}

/// A running child. Its stdout and stderr are read line by line on their own threads (so a
/// chatty child never blocks on a full pipe); dropping the guard kills and reaps it.
struct Running {
    child: Child,
    what: String,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far, for failure messages.
    stderr_log: Arc<Mutex<Vec<String>>>,
}

fn spawn(mut command: Command) -> Running {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = forward_lines(child.stdout.take().unwrap(), None);
    let stderr_log = Arc::new(Mutex::new(Vec::new()));
    let stderr = forward_lines(child.stderr.take().unwrap(), Some(stderr_log.clone()));
    Running {
        child,
        what,
        stdout,
        stderr,
        stderr_log,
    }
}

fn forward_lines(
    pipe: impl Read + Send + 'static,
    log: Option<Arc<Mutex<Vec<String>>>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = &log {
                log.lock().unwrap().push(line.clone());
            }
            if tx.send(line).is_err() && log.is_none() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn stderr_so_far(&self) -> String {
        self.stderr_log.lock().unwrap().join("\n")
    }

    /// The next stdout line, or a failure naming the child and its stderr.
    fn stdout_line(&mut self, timeout: Duration) -> String {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => panic!(
                "no stdout line from {} within {timeout:?} ({e:?}); stderr:\n{}",
                self.what,
                self.stderr_so_far()
            ),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn await_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!(
                    "no stderr line containing {needle:?} from {} within {timeout:?} ({e:?}); \
                     stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                ),
            }
        }
    }

    /// Waits for the child to exit; fails (and the guard kills it) past the timeout.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything left on stdout once the child has exited (the pipe then reaches EOF).
    fn rest_of_stdout(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.stdout.recv_timeout(WAIT) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => panic!("stdout of {} never closed", self.what),
            }
        }
    }

    /// Waits for the stderr pipe to close, then returns all of stderr.
    fn all_stderr(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.stderr.recv_timeout(deadline - Instant::now()) {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.stderr_so_far()
    }

    /// Sends a signal by name with the system `kill` (no libc in the tests).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Parses `corebus ready native=127.0.0.1:PORT`, PORT non-zero.
fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    let port: u16 = line
        .strip_prefix("corebus ready native=127.0.0.1:")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    (port != 0).then(|| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts `serve` with `command` and waits for its ready line.
fn start_serve(command: Command) -> (Running, SocketAddr) {
    let mut serve = spawn(command);
    let line = serve.stdout_line(WAIT);
    let addr = parse_ready_line(&line).unwrap_or_else(|| {
        panic!(
            "not a ready line: {line:?}; stderr:\n{}",
            serve.stderr_so_far()
        )
    });
    (serve, addr)
}

/// `THP_enabled` of process `pid` (Linux 5.0 and later), None where the kernel has no such line.
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

/// `serve` turns transparent huge pages off for itself unless asked not to (`--huge-pages`).
#[test]
fn serve_disables_transparent_huge_pages_unless_asked_for_them() {
    let Some(ours) = thp_enabled(std::process::id()) else {
        return; // Not Linux, or a kernel that does not report it.
    };
    let serve = |extra: &[&str]| serve_one_shard(extra).0;
    let default = serve(&[]);
    assert_eq!(thp_enabled(default.child.id()), Some(false));
    // A child inherits the setting: only a test process that has them can see them kept.
    if ours {
        let asked = serve(&["--huge-pages"]);
        assert_eq!(thp_enabled(asked.child.id()), Some(true));
    }
}

/// A switch's environment variable takes the spellings environments use (1/0, yes/no, on/off),
/// and `--print-config` shows what it parsed to, so its output reads back as a config file.
#[test]
fn switches_from_the_environment_take_one_zero_yes_and_no() {
    let mut command = corebus(&["serve", "--print-config"]);
    command.env("COREBUS_NO_PIN", "1");
    command.env("COREBUS_HUGE_PAGES", "on");
    command.env("COREBUS_AUTO_CREATE_TOPICS", "no");
    let (status, stdout, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    let value_of = |key: &str| {
        stdout
            .iter()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("no {key} in {stdout:?}"))
            .to_string()
    };
    assert_eq!(value_of("no-pin"), "true");
    assert_eq!(value_of("huge-pages"), "true");
    assert_eq!(value_of("auto-create-topics"), "false");
    let mut command = corebus(&["serve", "--print-config"]);
    command.env("COREBUS_NO_PIN", "maybe");
    let (status, _, stderr) = run(command);
    assert!(!status.success());
    assert!(
        stderr.contains("invalid value 'maybe' for '--no-pin'"),
        "{stderr}"
    );
}

/// `serve` with one unpinned shard on a free port, plus `extra` flags.
fn serve_one_shard(extra: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    start_serve(corebus(&args))
}

fn serve_two_shards() -> (Running, SocketAddr) {
    start_serve(corebus(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
    ]))
}

/// Runs a short command to completion: (status, stdout lines, stderr).
fn run(command: Command) -> (ExitStatus, Vec<String>, String) {
    let mut child = spawn(command);
    let status = child.wait(WAIT);
    let stdout = child.rest_of_stdout();
    let stderr = child.all_stderr();
    (status, stdout, stderr)
}

/// A loopback port where nothing listens (bound once by us, then released).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// The shard of each of `count` fresh connections.
fn shards_seen(addr: SocketAddr, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| Client::connect(addr).unwrap().server_info().shard)
        .collect()
}

#[test]
fn serve_prints_exactly_one_ready_line_and_listens_there() {
    let (mut serve, addr) = serve_two_shards();
    let mut client = Client::connect(addr).expect("the announced port accepts clients");
    client.ping().unwrap();
    drop(client);
    serve.signal("TERM");
    assert!(serve.wait(STOP_WAIT).success());
    let rest = serve.rest_of_stdout();
    assert!(rest.is_empty(), "stdout after the ready line: {rest:?}");
}

#[test]
fn sub_prints_what_pub_publishes() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let mut sub = spawn(corebus(&[
        "sub", "--addr", &addr, "orders.*", "--count", "2",
    ]));
    sub.await_stderr("subscribed", WAIT);

    for expected_seq in 1..=2 {
        let (status, stdout, stderr) = run(corebus(&[
            "pub",
            "--confirm",
            "--addr",
            &addr,
            "orders.created",
            "hello",
        ]));
        assert!(status.success(), "pub failed: {status}; stderr:\n{stderr}");
        assert_eq!(stdout.len(), 1, "pub stdout: {stdout:?}");
        assert!(
            stdout[0].contains("orders.created")
                && stdout[0].ends_with(&format!("seq={expected_seq}")),
            "pub stdout: {stdout:?}"
        );
    }

    let status = sub.wait(WAIT);
    assert!(
        status.success(),
        "sub: {status}; stderr:\n{}",
        sub.stderr_so_far()
    );
    let lines = sub.rest_of_stdout();
    assert_eq!(lines.len(), 2, "sub stdout: {lines:?}");
    assert!(lines[0].contains("orders.created seq=1 hello"), "{lines:?}");
    assert!(lines[1].contains("orders.created seq=2 hello"), "{lines:?}");
}

/// The broker exits 0 on the signal, promptly, and a connected client sees its connection
/// end (with the broker's SHUTTING_DOWN notice).
fn a_signal_stops_serve_cleanly(signal: &str) {
    let (mut serve, addr) = serve_two_shards();
    let mut client = Client::connect(addr).unwrap();
    let mut subscription = client.subscribe("news").unwrap();
    client.ping().unwrap();

    let signalled = Instant::now();
    serve.signal(signal);
    let status = serve.wait(STOP_WAIT);
    assert!(
        status.success(),
        "SIG{signal}: {status}; stderr:\n{}",
        serve.stderr_so_far()
    );
    let took = signalled.elapsed();

    match subscription.recv_timeout(WAIT) {
        Err(Error::Closed(reason)) => assert_eq!(
            reason.as_ref().and_then(|r| r.code()),
            Some(ErrorCode::ShuttingDown),
            "close reason {reason:?}"
        ),
        other => panic!("SIG{signal}: the subscription should end, got {other:?}"),
    }
    assert!(client.ping().is_err(), "the connection is gone");
    eprintln!("SIG{signal}: exited in {took:?}");
}

#[test]
fn sigterm_stops_serve_with_status_zero_and_ends_client_connections() {
    a_signal_stops_serve_cleanly("TERM");
}

#[test]
fn sigint_stops_serve_with_status_zero_and_ends_client_connections() {
    a_signal_stops_serve_cleanly("INT");
}

#[test]
fn bad_flags_exit_non_zero_with_a_message_naming_the_flag() {
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--listen", "127.0.0.1:0", "--shards", "0"], &["--shards"]),
        (
            &["--listen", "127.0.0.1:0", "--cores", "x"],
            &["--cores", "x"],
        ),
        (
            &["--listen", "127.0.0.1:0", "--outbound-bytes-max", "10"],
            &["--outbound-bytes-max"],
        ),
        (&["--listen", "nonsense"], &["--listen", "nonsense"]),
    ];
    for (flags, mentions) in cases {
        let mut args = vec!["serve", "--no-pin"];
        args.extend_from_slice(flags);
        let (status, stdout, stderr) = run(corebus(&args));
        assert!(!status.success(), "{flags:?} was accepted: {status}");
        assert!(
            !stdout.iter().any(|line| line.contains("ready")),
            "{flags:?} started a broker: {stdout:?}"
        );
        for mention in mentions {
            assert!(
                stderr.contains(mention),
                "{flags:?}: stderr should mention {mention:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn environment_variables_configure_serve() {
    let mut command = corebus(&["serve", "--no-pin"]);
    command
        .env("COREBUS_SHARDS", "1")
        .env("COREBUS_LISTEN", "127.0.0.1:0")
        .env("COREBUS_LOG", "warn");
    let (_serve, addr) = start_serve(command);
    // One shard: every connection lands on shard 0.
    let shards = shards_seen(addr, 16);
    assert!(shards.iter().all(|&s| s == 0), "shards seen: {shards:?}");
}

#[test]
fn a_flag_overrides_its_environment_variable() {
    // COREBUS_SHARDS says 1 and the flag says 3; an env value that a flag overrides is not
    // even parsed (COREBUS_LISTEN is garbage here).
    let mut command = corebus(&[
        "serve",
        "--no-pin",
        "--shards",
        "3",
        "--listen",
        "127.0.0.1:0",
    ]);
    command
        .env("COREBUS_SHARDS", "1")
        .env("COREBUS_LISTEN", "nonsense");
    let (_serve, addr) = start_serve(command);
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.push(Client::connect(addr).unwrap().server_info().shard);
        if seen.iter().any(|&s| s != 0) {
            break;
        }
    }
    assert!(
        seen.iter().any(|&s| s != 0),
        "200 connections all landed on shard 0: --shards 3 ignored"
    );
    assert!(seen.iter().all(|&s| s < 3), "shards seen: {seen:?}");
}

#[test]
fn sub_as_a_durable_consumer_acks_and_resumes_where_it_stopped() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let consume = |count: &str| {
        spawn(corebus(&[
            "sub",
            "--addr",
            &addr,
            "jobs",
            "--consumer",
            "cli",
            "--ack",
            "--all",
            "--count",
            count,
        ]))
    };
    let mut first = consume("2");
    first.await_stderr("subscribed", WAIT);
    for body in ["one", "two", "three"] {
        let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr, "jobs", body]));
        assert!(status.success(), "pub failed: {stderr}");
    }
    assert!(first.wait(WAIT).success());
    // The second run resumes after the two acked messages. The first one's detach may still
    // be on its way to the topic's owner, which answers CONSUMER_IN_USE meanwhile.
    let mut attempts = 0;
    let lines = loop {
        let mut second = consume("1");
        if second.wait(WAIT).success() {
            break second.rest_of_stdout();
        }
        attempts += 1;
        assert!(attempts < 50, "stderr: {}", second.all_stderr());
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("jobs seq=3 three"), "{lines:?}");
}

#[test]
fn pub_without_a_broker_exits_non_zero_with_an_error_on_stderr() {
    let addr = closed_port().to_string();
    let (status, stdout, stderr) = run(corebus(&["pub", "--addr", &addr, "orders.created", "x"]));
    assert!(!status.success(), "pub to a closed port succeeded");
    assert!(stdout.is_empty(), "stdout: {stdout:?}");
    assert!(
        stderr.starts_with("corebus:") && stderr.len() > "corebus:".len() + 3,
        "stderr: {stderr:?}"
    );
    // The error names the address it could not reach (issue 11, defect 8).
    assert!(stderr.contains(&addr), "stderr: {stderr:?}");
}

#[test]
fn topic_create_sets_the_topics_replay_limit_and_refuses_a_second_create() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let create = || {
        run(corebus(&[
            "topic",
            "create",
            "--addr",
            &addr,
            "audit",
            "--replay-messages",
            "2",
            "--replay-ttl",
            "1h",
        ]))
    };
    let (status, stdout, stderr) = create();
    assert!(status.success(), "topic create failed: {stderr}");
    assert!(stdout[0].starts_with("created audit epoch="), "{stdout:?}");
    let (status, _, stderr) = create();
    assert!(!status.success());
    assert!(stderr.contains("TOPIC_EXISTS"), "stderr: {stderr:?}");
    for body in ["one", "two", "three"] {
        let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr, "audit", body]));
        assert!(status.success(), "pub failed: {stderr}");
    }
    let (status, lines, stderr) = run(corebus(&[
        "sub", "--addr", &addr, "audit", "--all", "--count", "2",
    ]));
    assert!(status.success(), "sub failed: {stderr}");
    assert_eq!(lines, ["audit seq=2 two", "audit seq=3 three"]);
    let delete = || run(corebus(&["topic", "delete", "--addr", &addr, "audit"]));
    let (status, stdout, stderr) = delete();
    assert!(status.success(), "topic delete failed: {stderr}");
    assert_eq!(stdout, ["deleted audit"]);
    let (status, _, stderr) = delete();
    assert!(!status.success());
    assert!(stderr.contains("TOPIC_NOT_FOUND"), "stderr: {stderr:?}");
}

#[test]
fn the_reflector_serves_a_bench_run_and_stops_by_itself() {
    let mut reflector = spawn(corebus(&[
        "bench",
        "reflector",
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "20",
    ]));
    let line = reflector.stdout_line(WAIT);
    let addr = line
        .strip_prefix("reflector listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
        .to_owned();
    let target = format!("corebus://{addr}");
    for subscribers in ["4", "0"] {
        let (status, stdout, stderr) = run(corebus(&[
            "bench",
            "--target",
            &target,
            "--subscribers",
            subscribers,
            "--duration",
            "1",
            "--warmup",
            "0",
            "--json",
        ]));
        assert!(status.success(), "bench failed: {stderr}");
        let result: serde_json::Value = serde_json::from_str(&stdout.join("\n")).unwrap();
        let published = result["published"].as_u64().unwrap();
        assert!(published > 1000, "{result}");
        let expected = published * subscribers.parse::<u64>().unwrap();
        assert_eq!(result["delivered"].as_u64(), Some(expected), "{result}");
    }
    reflector.signal("TERM");
    assert!(reflector.wait(STOP_WAIT).success());
}

#[test]
fn sub_in_an_acked_pattern_group_acks_what_it_prints() {
    let (_serve, addr) = serve_two_shards();
    let addr_text = addr.to_string();
    let mut member = spawn(corebus(&[
        "sub", "--addr", &addr_text, "jobs.*", "--group", "g", "--ack", "--count", "2",
    ]));
    member.await_stderr("subscribed", WAIT);
    for topic in ["jobs.a", "jobs.b"] {
        let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr_text, topic, "work"]));
        assert!(status.success(), "pub failed: {stderr}");
    }
    // `sub` checks that the broker took its acks (they name each message's topic).
    assert!(member.wait(WAIT).success(), "{}", member.all_stderr());
    assert_eq!(member.rest_of_stdout().len(), 2);
}

/// Issue 11, defect 1: a second broker on a port in use refuses to start (it would otherwise
/// join the first one's SO_REUSEPORT group and take half of its clients), while the shards
/// of each broker still share their port.
#[test]
fn a_second_serve_on_a_port_in_use_fails_with_address_already_in_use() {
    let port = closed_port().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let serve =
        |shards: &str| corebus(&["serve", "--no-pin", "--shards", shards, "--listen", &listen]);
    let (_first, addr) = start_serve(serve("2"));
    assert_eq!(addr.port().to_string(), port);
    let (status, stdout, stderr) = run(serve("2"));
    assert!(!status.success(), "the second broker started: {stdout:?}");
    assert!(stdout.is_empty(), "the second broker printed {stdout:?}");
    assert!(
        stderr.contains("address already in use") && stderr.contains(&listen),
        "stderr: {stderr}"
    );
    // The first broker still has both of its shards and all of its clients.
    let mut seen = shards_seen(addr, 64);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1], "shards of the first broker");
}

/// Issue 11, defect 3 and the `pub` a user reaches for: `pub` prints the sequence number
/// without `--confirm`; the payload may come from stdin or `--file`, byte for byte; `--count`
/// publishes several; `--addr` takes `corebus://HOST:PORT` like `bench --target`.
#[test]
fn pub_prints_the_sequence_and_takes_its_payload_from_stdin_or_a_file() {
    let (_serve, addr) = serve_two_shards();
    let url = format!("corebus://{addr}");
    let (status, stdout, stderr) = run(corebus(&["pub", "--addr", &url, "notes", "first"]));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, ["published notes seq=1"]);

    let binary: Vec<u8> = (0..=255u8).chain([b'\n', 0, b'\r']).collect();
    let mut subscriber = Client::connect(addr).unwrap();
    let mut notes = subscriber.subscribe("notes").unwrap();

    let mut command = corebus(&["pub", "--addr", &url, "notes"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&binary).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "published notes seq=2\n"
    );
    assert_eq!(notes.recv_timeout(WAIT).unwrap().payload, binary);

    let file = std::env::temp_dir().join(format!("corebus-pub-{}.bin", std::process::id()));
    std::fs::write(&file, &binary).unwrap();
    let path = file.to_str().unwrap();
    let (status, stdout, stderr) = run(corebus(&[
        "pub", "--addr", &url, "notes", "--file", path, "--count", "3", "--rate", "1000",
    ]));
    std::fs::remove_file(&file).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.len() == 1 && stdout[0].starts_with("published 3 messages to notes"),
        "{stdout:?}"
    );
    assert!(stdout[0].ends_with("last seq=5"), "{stdout:?}");
    for seq in 3..=5 {
        let message = notes.recv_timeout(WAIT).unwrap();
        assert_eq!((message.seq, &message.payload), (seq, &binary));
    }

    // A name the wire cannot carry is an error, not a panic (defect 2).
    let long = "a".repeat(300);
    for args in [
        vec!["pub", "--addr", &url, &long, "x"],
        vec!["sub", "--addr", &url, &long],
        vec!["topic", "create", "--addr", &url, &long],
    ] {
        let (status, _, stderr) = run(corebus(&args));
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("BAD_TOPIC") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

/// `request` and `reply` (like `nats req` and `nats reply`), and `sub --json`.
#[test]
fn request_reply_and_json_output() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let mut fixed = spawn(corebus(&[
        "reply", "--addr", &addr, "svc.time", "--answer", "noon", "--count", "1",
    ]));
    fixed.await_stderr("answering", WAIT);
    let (status, stdout, stderr) = run(corebus(&["request", "--addr", &addr, "svc.time", "?"]));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, ["noon"]);
    assert!(fixed.wait(WAIT).success());

    let mut exec = spawn(corebus(&[
        "reply",
        "--addr",
        &addr,
        "svc.upper",
        "--exec",
        "tr a-z A-Z",
        "--count",
        "1",
    ]));
    exec.await_stderr("answering", WAIT);
    let (status, stdout, stderr) =
        run(corebus(&["request", "--addr", &addr, "svc.upper", "shout"]));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, ["SHOUT"]);
    assert!(exec.wait(WAIT).success());

    let (status, _, stderr) = run(corebus(&[
        "request",
        "--addr",
        &addr,
        "svc.nobody",
        "x",
        "--timeout",
        "200ms",
    ]));
    assert!(!status.success());
    assert!(
        stderr.contains("no answer on svc.nobody within 200ms"),
        "{stderr}"
    );

    let mut sub = spawn(corebus(&[
        "sub", "--addr", &addr, "lines", "--json", "--count", "1",
    ]));
    sub.await_stderr("subscribed", WAIT);
    let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr, "lines", "a\nb"]));
    assert!(status.success(), "{stderr}");
    assert!(sub.wait(WAIT).success());
    let lines = sub.rest_of_stdout();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let object: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(object["payload"], "a\nb");
    assert_eq!(object["topic"], "lines");
    assert_eq!(object["seq"], 1);
    assert_eq!(object["delivery_count"], 1);
}

#[test]
fn version_names_the_commit() {
    let (status, stdout, _) = run(corebus(&["--version"]));
    assert!(status.success());
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert!(
        stdout[0].starts_with(&format!("corebus {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout:?}"
    );
}

/// `--nack-every` makes the broker redeliver; `--verbose` shows the delivery count.
#[test]
fn sub_nack_every_shows_redeliveries() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let mut sub = spawn(corebus(&[
        "sub",
        "--addr",
        &addr,
        "work",
        "--consumer",
        "w",
        "--ack",
        "--nack-every",
        "2",
        "--ack-wait",
        "10s",
        "--deliver-max",
        "3",
        "--in-flight-max",
        "8",
        "--verbose",
        "--count",
        "3",
    ]));
    sub.await_stderr("subscribed", WAIT);
    for body in ["one", "two"] {
        let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr, "work", body]));
        assert!(status.success(), "{stderr}");
    }
    assert!(sub.wait(WAIT).success(), "{}", sub.stderr_so_far());
    let lines = sub.rest_of_stdout();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("work seq=1 delivery_count=1 epoch="),
        "{lines:?}"
    );
    assert!(lines[1].contains("seq=2 delivery_count=1") && lines[1].contains("nacked"));
    assert!(
        lines[2].starts_with("work seq=2 delivery_count=2"),
        "{lines:?}"
    );
}

/// Issue 11, defect 4: a default start fits the machine (no memory warning); an explicit
/// flag that overcommits is still warned about.
#[test]
fn default_limits_fit_the_machine_and_explicit_overcommit_is_warned() {
    let quiet = corebus(&[
        "serve",
        "--no-pin",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (mut serve, _) = start_serve(quiet);
    serve.signal("TERM");
    assert!(serve.wait(STOP_WAIT).success());
    let stderr = serve.all_stderr();
    assert!(!stderr.contains("memory_budget_exceeds_ram"), "{stderr}");

    let (mut serve, _) = start_serve(corebus(&[
        "serve",
        "--no-pin",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--connections-max",
        "100000000",
    ]));
    serve.await_stderr("memory_budget_exceeds_ram", WAIT);
}

/// The config file: flag > env > file > default, from a real process; a mistake in the file
/// names the key and the line.
#[test]
fn a_config_file_sits_between_the_environment_and_the_defaults() {
    let path = std::env::temp_dir().join(format!("corebus-cli-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nshards = 3\nno-pin = true\nring-slots = 77\nlog-level = \"warn\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    // COREBUS_SHARDS beats the file's 3; --ring-slots beats both.
    let mut command = corebus(&[
        "serve",
        "--config",
        config,
        "--print-config",
        "--ring-slots",
        "5",
    ]);
    command.env("COREBUS_SHARDS", "2");
    let (status, stdout, stderr) = run(command);
    assert!(status.success(), "{stderr}");
    let line = |key: &str| {
        stdout
            .iter()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {stdout:?}"))
            .clone()
    };
    assert!(
        line("shards").starts_with("shards = 2")
            && line("shards").ends_with("# environment COREBUS_SHARDS")
    );
    assert!(
        line("ring-slots").starts_with("ring-slots = 5") && line("ring-slots").ends_with("# flag")
    );
    assert!(line("no-pin").starts_with("no-pin = true") && line("no-pin").contains(":3"));
    assert!(line("read-chunk-bytes").ends_with("# default"));

    // The broker really runs with it: 2 shards (the environment), listening where the file says.
    let mut command = corebus(&["serve", "--config", config]);
    command.env("COREBUS_SHARDS", "2");
    let (_serve, addr) = start_serve(command);
    let mut seen = shards_seen(addr, 64);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1]);

    std::fs::write(&path, "shards = 1\n\nconnection-max = 5\n").unwrap();
    let (status, stdout, stderr) = run(corebus(&["serve", "--config", config]));
    std::fs::remove_file(&path).unwrap();
    assert!(!status.success() && stdout.is_empty());
    assert!(
        stderr.contains(&format!("{config}:3: unknown key `connection-max`")),
        "{stderr}"
    );
}

/// The packaging's health check: `--ready-file` holds the ready line while the broker runs,
/// `corebus ping` succeeds against it, and the file is gone once the broker stopped.
#[test]
fn the_ready_file_and_ping_make_a_health_check() {
    let path = std::env::temp_dir().join(format!("corebus-ready-{}", std::process::id()));
    let ready = path.to_str().unwrap();
    let (mut serve, addr) = start_serve(corebus(&[
        "serve",
        "--no-pin",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        ready,
    ]));
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(
        line.trim_end()
            .starts_with(&format!("corebus ready native={addr} http=127.0.0.1:")),
        "{line}"
    );
    let addr = addr.to_string();
    let (status, stdout, stderr) = run(corebus(&["ping", "--addr", &addr, "--timeout", "2s"]));
    assert!(status.success(), "{stderr}");
    assert!(
        stdout[0].starts_with(&format!("pong from {addr} (shard 0) in ")),
        "{stdout:?}"
    );
    serve.signal("TERM");
    assert!(serve.wait(STOP_WAIT).success());
    assert!(!path.exists(), "the ready file outlived the broker");
    let (status, _, stderr) = run(corebus(&["ping", "--addr", &addr]));
    assert!(!status.success());
    assert!(stderr.contains(&addr), "{stderr}");
}

/// `sub --manual`: each message is acked, nacked or skipped as the user answers on stdin.
#[test]
fn sub_manual_acks_or_nacks_as_told() {
    use std::io::Write;
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let mut command = corebus(&[
        "sub",
        "--addr",
        &addr,
        "tasks",
        "--consumer",
        "m",
        "--ack",
        "--manual",
        "--verbose",
        "--count",
        "2",
    ]);
    command.stdin(Stdio::piped());
    let what = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = forward_lines(child.stdout.take().unwrap(), None);
    let stderr_log = Arc::new(Mutex::new(Vec::new()));
    let stderr = forward_lines(child.stderr.take().unwrap(), Some(stderr_log.clone()));
    let mut sub = Running {
        child,
        what,
        stdout,
        stderr,
        stderr_log,
    };
    sub.await_stderr("subscribed", WAIT);
    let (status, _, stderr) = run(corebus(&["pub", "--addr", &addr, "tasks", "once"]));
    assert!(status.success(), "{stderr}");
    let first = sub.stdout_line(WAIT);
    assert!(first.starts_with("tasks seq=1 delivery_count=1"), "{first}");
    stdin.write_all(b"n\n").unwrap();
    let second = sub.stdout_line(WAIT);
    assert!(
        second.starts_with("tasks seq=1 delivery_count=2"),
        "{second}"
    );
    stdin.write_all(b"a\n").unwrap();
    assert!(sub.wait(WAIT).success(), "{}", sub.stderr_so_far());
}

/// `topic list` asks the HTTP port, which gathers the topics from every shard.
#[test]
fn topic_list_shows_every_shards_topics() {
    let path = std::env::temp_dir().join(format!("corebus-list-{}", std::process::id()));
    let (_serve, addr) = start_serve(corebus(&[
        "serve",
        "--no-pin",
        "--shards",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        path.to_str().unwrap(),
    ]));
    let line = std::fs::read_to_string(&path).unwrap();
    let http = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("http="))
        .unwrap()
        .to_string();
    let addr = addr.to_string();
    for topic in ["list.a", "list.b", "list.c"] {
        let (status, _, stderr) = run(corebus(&["topic", "create", "--addr", &addr, topic]));
        assert!(status.success(), "{stderr}");
    }
    let (status, stdout, stderr) = run(corebus(&["topic", "list", "--http-addr", &http]));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        [
            "list.a subscribers=0",
            "list.b subscribers=0",
            "list.c subscribers=0"
        ]
    );
    let (status, _, stderr) = run(corebus(&["topic", "list", "--http-addr", &addr]));
    assert!(!status.success(), "the native port is not the HTTP port");
    assert!(stderr.contains(&addr), "{stderr}");
}

/// `pub -H` sends headers; `sub --verbose` shows them.
#[test]
fn headers_go_from_pub_to_sub_verbose() {
    let (_serve, addr) = serve_two_shards();
    let addr = addr.to_string();
    let mut sub = spawn(corebus(&["sub", "--addr", &addr, "--verbose", "hdr.cli"]));
    sub.await_stderr("subscribed", WAIT);
    let (status, stdout, stderr) = run(corebus(&[
        "pub",
        "--addr",
        &addr,
        "-H",
        "id:o-1",
        "-H",
        "trace:abc",
        "hdr.cli",
        "hello",
    ]));
    assert!(status.success(), "{stderr}");
    assert!(
        stdout[0].starts_with("published hdr.cli seq="),
        "{stdout:?}"
    );
    let line = sub.stdout_line(WAIT);
    assert!(line.contains(" id:o-1 trace:abc hello"), "{line}");
}

/// The connection lifecycle as `serve` logs it: one line when a native client connects and
/// one when it goes, each naming the protocol; the shutdown summary is `key=value` fields.
/// Returns stderr.
fn a_connection_and_a_shutdown(extra: &[&str]) -> String {
    let (mut serve, addr) = serve_one_shard(extra);
    let mut client = Client::connect(addr).unwrap();
    client.publish("logged.topic", b"one").unwrap();
    drop(client);
    serve.await_stderr("connection_closed", WAIT);
    serve.signal("TERM");
    assert!(serve.wait(STOP_WAIT).success());
    serve.all_stderr()
}

#[test]
fn text_logs_name_the_protocol_and_end_with_a_structured_summary() {
    let stderr = a_connection_and_a_shutdown(&[]);
    let line = |event: &str| {
        stderr
            .lines()
            .find(|line| line.contains(&format!("event={event} ")))
            .unwrap_or_else(|| panic!("no {event} line in:\n{stderr}"))
    };
    assert!(line("connection_opened").contains(" protocol=native"));
    let closed = line("connection_closed");
    assert!(closed.contains(" protocol=native") && closed.contains(" reason=peer_closed"));
    let stopped = line("stopped");
    assert!(
        stopped.contains(" published=1 ") && stopped.contains(" closed_peer_closed=1"),
        "{stopped}"
    );
    assert!(!stderr.contains("ShardCounters"), "a Debug dump:\n{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let stderr = a_connection_and_a_shutdown(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        for key in ["ts", "level", "event"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
    }
    let find = |event: &str| {
        lines
            .iter()
            .find(|line| line["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line in:\n{stderr}"))
    };
    let opened = find("connection_opened");
    assert_eq!(opened["protocol"], "native");
    assert_eq!(opened["shard"], 0);
    assert!(opened["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let closed = find("connection_closed");
    assert_eq!(closed["protocol"], "native");
    assert_eq!(closed["reason"], "peer_closed");
    assert_eq!(closed["conn"], opened["conn"]);
    let stopped = find("stopped");
    assert_eq!(stopped["level"], "info");
    assert_eq!(stopped["published"], 1);
    assert_eq!(stopped["connections_accepted"], 1);
    assert_eq!(stopped["closed_peer_closed"], 1);
}

#[test]
fn the_log_format_comes_from_the_environment_too() {
    let mut command = corebus(&["serve", "--listen", "127.0.0.1:0", "--no-pin"]);
    command.env("COREBUS_LOG_FORMAT", "json");
    let (mut serve, _addr) = start_serve(command);
    serve.signal("TERM");
    assert!(serve.wait(STOP_WAIT).success());
    let stderr = serve.all_stderr();
    let first = stderr.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first).expect(first);
    assert!(line["event"].is_string(), "{line}");
}
