//! What each CLI command does, so `main.rs` stays a few lines.

use std::error::Error;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{
    CreateTopicArgs, DeleteTopicArgs, ListTopicsArgs, PingArgs, PubArgs, ReplyArgs, RequestArgs,
    SubArgs,
};
use crate::client::{Client, Delivery, Sharing, SubscribeOptions};
use crate::server::Broker;
use crate::settings::{ServeSettings, Source};

type CommandResult = Result<(), Box<dyn Error>>;

/// Runs the broker until SIGINT or SIGTERM, then stops it gracefully; or, with
/// `--print-config` or `--example-config`, prints and exits.
pub fn serve(settings: &ServeSettings) -> CommandResult {
    let args = &settings.args;
    if args.example_config {
        print!("{}", crate::settings::example_config());
        return Ok(());
    }
    if args.print_config {
        print!("{}", crate::settings::print_config(&settings.settings));
        return Ok(());
    }
    crate::logging::init(args.log_level, args.log_format);
    for setting in &settings.settings {
        if let Source::Fitted { .. } = setting.source {
            log::info!(
                "event=limit_fitted_to_memory {}={} source=\"{}\"",
                setting.key,
                setting.value.as_deref().unwrap_or_default(),
                setting.source
            );
        }
    }
    if !args.huge_pages {
        disable_transparent_huge_pages();
    }
    let config = settings.config.clone();
    // Registered before the listeners exist, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let broker = Broker::start(config)?;
    // The file first: whoever sees the line on stdout may rely on the file being there too.
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", broker.ready_line()))
            .map_err(|e| format!("cannot write the ready file {}: {e}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", broker.ready_line())?;
    stdout.flush()?;
    drop(stdout);
    if let Some(signal) = signals.forever().next() {
        log::info!("event=signal signal={signal}");
    }
    if let Some(path) = &args.ready_file {
        // Not ready any more: a health check reading it must fail from now on.
        let _ = std::fs::remove_file(path);
    }
    let counters = broker.shutdown()?;
    log::info!(
        "event=stopped {}",
        crate::logging::key_values(&counters.fields())
    );
    Ok(())
}

/// Asks the kernel not to back this process's memory with transparent huge pages (see
/// `serve --huge-pages`). Process-wide, which is why `serve` does it and the library does
/// not: an application embedding the broker keeps its own choice. A kernel that refuses
/// (one older than 3.15) leaves the default, and says so in the log.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes no pointers; the unused arguments must be zero,
        // passed at the width the kernel reads them (unsigned long).
        let unused: libc::c_ulong = 0;
        let result = unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                1 as libc::c_ulong,
                unused,
                unused,
                unused,
            )
        };
        if result != 0 {
            log::warn!(
                "event=huge_pages_not_disabled error={:?}",
                std::io::Error::last_os_error().to_string()
            );
        }
    }
}

/// Connects, naming the address in the error (the client's own error does not know it).
fn connect(addr: &str) -> Result<Client, Box<dyn Error>> {
    Client::connect(addr).map_err(|e| format!("cannot connect to the broker at {addr}: {e}").into())
}

/// A payload given on the command line, or (`None` or `-`) all of stdin, byte for byte.
fn payload_from(message: Option<&str>) -> Result<Vec<u8>, Box<dyn Error>> {
    match message {
        Some(text) if text != "-" => Ok(text.as_bytes().to_vec()),
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
            Ok(bytes)
        }
    }
}

/// Publishes and prints the sequence number the broker gave the message. With `--count N`
/// the first N-1 are quiet publishes and the last is confirmed: the broker numbers a topic's
/// messages in order, so the last confirm also means every earlier one was sequenced or
/// refused (a refusal is reported).
pub fn publish(args: &PubArgs) -> CommandResult {
    let payload = match &args.file {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read the payload from {}: {e}", path.display()))?,
        None => payload_from(args.message.as_deref())?,
    };
    let headers: Vec<(&str, &[u8])> = args
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let mut client = connect(&args.addr)?;
    let started = Instant::now();
    for k in 1..args.count {
        if args.rate > 0 {
            // Message k is due at k / rate seconds after the start.
            let due = started + Duration::from_secs_f64(k as f64 / args.rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if headers.is_empty() {
            client.publish(&args.topic, &payload)?;
        } else {
            client.publish_with_headers(&args.topic, &headers, &payload)?;
        }
    }
    if args.rate > 0 && args.count > 1 {
        let due = started + Duration::from_secs_f64(args.count as f64 / args.rate as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let seq = if headers.is_empty() {
        client.publish_confirmed(&args.topic, &payload)?
    } else {
        client.publish_with_headers(&args.topic, &headers, &payload)?
    };
    let (refused, uncounted) = client.take_async_errors();
    if let Some(error) = refused.first() {
        return Err(format!(
            "{} of {} publishes were refused, the first with {error}",
            refused.len() as u64 + uncounted,
            args.count
        )
        .into());
    }
    if args.count == 1 {
        println!("published {} seq={seq}", args.topic);
    } else {
        println!(
            "published {} messages to {} in {:.3}s, last seq={seq}",
            args.count,
            args.topic,
            started.elapsed().as_secs_f64()
        );
    }
    client.close()?;
    Ok(())
}

/// `corebus ping`: a health check that exercises the handshake and one round trip.
pub fn ping(args: &PingArgs) -> CommandResult {
    let options = crate::client::ClientOptions {
        request_timeout: Duration::from_millis(args.timeout),
        ..crate::client::ClientOptions::default()
    };
    let mut client = Client::connect_with(args.addr.as_str(), options)
        .map_err(|e| format!("cannot reach the broker at {}: {e}", args.addr))?;
    let rtt = client.ping()?;
    println!(
        "pong from {} (shard {}) in {} us",
        args.addr,
        client.server_info().shard,
        rtt.as_micros()
    );
    client.close()?;
    Ok(())
}

/// Sends one request and prints the first answer's payload.
pub fn request(args: &RequestArgs) -> CommandResult {
    let payload = payload_from(args.message.as_deref())?;
    let mut client = connect(&args.addr)?;
    let timeout = Duration::from_millis(args.timeout);
    let answer = match client.request(&args.topic, &payload, timeout) {
        Err(crate::client::Error::Timeout) => {
            return Err(format!(
                "no answer on {} within {}",
                args.topic,
                humantime::format_duration(timeout)
            )
            .into())
        }
        other => other?,
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&answer.payload)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    drop(stdout);
    client.close()?;
    Ok(())
}

/// Answers requests until `--count` or until the connection ends.
pub fn reply(args: &ReplyArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    let options = SubscribeOptions {
        sharing: args
            .group
            .as_ref()
            .map_or(Sharing::None, |group| Sharing::Group(group.clone())),
        ..SubscribeOptions::default()
    };
    let mut requests = client.subscribe_with(&args.topic, options)?;
    eprintln!("answering requests on {}", args.topic);
    let mut answered = 0u64;
    while args.count.is_none_or(|count| answered < count) {
        let request = requests.recv()?;
        if request.reply_to.is_none() {
            eprintln!(
                "{} seq={}: no reply topic, not a request; skipped",
                request.topic, request.seq
            );
            continue;
        }
        let answer = match (&args.answer, &args.exec) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(command)) => run_for_answer(command, &request)?,
            (None, None) => unreachable!("clap requires --answer or --exec"),
        };
        client.reply(&request, &answer)?;
        answered += 1;
        eprintln!("answered {} seq={}", request.topic, request.seq);
    }
    // Quiet publishes are answered only when refused: one round trip collects any refusal.
    client.ping()?;
    if let Some(error) = client.take_async_errors().0.into_iter().next() {
        return Err(format!("an answer was refused: {error}").into());
    }
    Ok(())
}

/// Runs `sh -c command` with the request's payload on stdin; its stdout is the answer.
fn run_for_answer(command: &str, request: &Delivery) -> Result<Vec<u8>, Box<dyn Error>> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("COREBUS_TOPIC", &request.topic)
        .env("COREBUS_SEQ", request.seq.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = request.payload.clone();
    // Written from another thread, so a command that prints before it reads cannot deadlock.
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let output = child.wait_with_output()?;
    let _ = writer.join();
    if !output.status.success() {
        eprintln!("`{command}` exited with {}", output.status);
    }
    Ok(output.stdout)
}

pub fn create_topic(args: &CreateTopicArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    let position = client.create_topic(&args.topic, args.options())?;
    println!("created {} epoch={}", args.topic, position.epoch);
    client.close()?;
    Ok(())
}

pub fn delete_topic(args: &DeleteTopicArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    client.delete_topic(&args.topic)?;
    println!("deleted {}", args.topic);
    client.close()?;
    Ok(())
}

/// Lists topics from the HTTP port's `GET /v1/topics` (the broker gathers them from every
/// shard), one `NAME subscribers=N` line each, sorted by name.
pub fn list_topics(args: &ListTopicsArgs) -> CommandResult {
    use std::io::Read;
    let addr = &args.http_addr;
    let mut stream = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("cannot reach the HTTP port at {addr}: {e}"))?;
    stream.set_read_timeout(Some(args.timeout))?;
    let request = format!("GET /v1/topics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} sent no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("{addr} answered {status}: {body}").into());
    }
    let listed: serde_json::Value = serde_json::from_str(body)?;
    let topics = listed["topics"].as_array().cloned().unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    for topic in topics {
        let name = topic["name"].as_str().unwrap_or_default();
        let subscribers = topic["subscribers"].as_u64().unwrap_or_default();
        writeln!(stdout, "{name} subscribers={subscribers}")?;
    }
    Ok(())
}

pub fn subscribe(args: &SubArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    let options = args.options()?;
    let mut subscription = client.subscribe_with(&args.subject, options)?;
    eprintln!("subscribed to {}", args.subject);
    let epoch = subscription.position().map(|position| position.epoch);
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let missed_before = subscription.missed();
        let message = subscription.recv()?;
        if subscription.missed() > missed_before {
            let topic = subscription.last_gap().map_or("", |gap| gap.topic.as_str());
            eprintln!(
                "gap: {} requested messages of {topic} were no longer retained",
                subscription.missed() - missed_before
            );
        }
        received += 1;
        let mut nack = args.nack_every.is_some_and(|n| received.is_multiple_of(n));
        let mut answer = Answer::Ack;
        if args.manual {
            // Printed first, so the question is about what is on the screen.
            print_message(args, &message, epoch, false)?;
            answer = ask()?;
            nack = answer == Answer::Nack;
        }
        if args.ack {
            match (answer, nack) {
                (Answer::Skip | Answer::Quit, _) => {}
                (_, true) => client.nack_message(&subscription, &message)?,
                (_, false) => client.ack_message(&subscription, &message)?,
            }
            refused_acks(&mut client)?;
        }
        if answer == Answer::Quit {
            break;
        }
        if !args.manual {
            print_message(args, &message, epoch, nack)?;
        }
    }
    if args.ack {
        // Acks are answered only when refused: one round trip collects any still on the way.
        client.ping()?;
        refused_acks(&mut client)?;
    }
    Ok(())
}

/// What `sub --manual` is told to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack,
    Skip,
    Quit,
}

/// Reads one answer from stdin (end of input: quit).
fn ask() -> Result<Answer, Box<dyn Error>> {
    loop {
        eprint!("[A]ck, [n]ack, [s]kip or [q]uit? ");
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Ok(Answer::Quit);
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "" | "a" | "ack" => return Ok(Answer::Ack),
            "n" | "nack" => return Ok(Answer::Nack),
            "s" | "skip" => return Ok(Answer::Skip),
            "q" | "quit" => return Ok(Answer::Quit),
            other => eprintln!("`{other}`: answer a, n, s or q"),
        }
    }
}

fn print_message(
    args: &SubArgs,
    message: &Delivery,
    epoch: Option<u64>,
    nack: bool,
) -> CommandResult {
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", message_json(message, epoch, nack))?;
    } else if args.verbose {
        write!(
            stdout,
            "{} seq={} delivery_count={}",
            message.topic, message.seq, message.delivery_count
        )?;
        if let Some(epoch) = epoch {
            write!(stdout, " epoch={epoch:016x}")?;
        }
        if let Some(reply_to) = &message.reply_to {
            write!(stdout, " reply_to={reply_to}")?;
        }
        if nack {
            write!(stdout, " nacked")?;
        }
        for (name, value) in &message.headers {
            write!(
                stdout,
                " {name}:{}",
                String::from_utf8_lossy(value).escape_debug()
            )?;
        }
        writeln!(stdout, " {}", String::from_utf8_lossy(&message.payload))?;
    } else {
        writeln!(
            stdout,
            "{} seq={} {}",
            message.topic,
            message.seq,
            String::from_utf8_lossy(&message.payload)
        )?;
    }
    stdout.flush()?;
    Ok(())
}

/// Fails with the broker's reason if it refused an ack (the message would come back).
fn refused_acks(client: &mut Client) -> CommandResult {
    match client.take_async_errors().0.into_iter().next() {
        Some(error) => Err(format!("an ack was refused: {error}").into()),
        None => Ok(()),
    }
}

/// One line of `sub --json`: every field of the delivery, the payload as a JSON string when
/// it is UTF-8 (escaped, so a multi-line payload stays on one line) or base64 otherwise.
fn message_json(message: &Delivery, epoch: Option<u64>, nacked: bool) -> String {
    use base64::Engine;
    let mut object = serde_json::json!({
        "topic": message.topic,
        "seq": message.seq,
        "timestamp_ns": message.timestamp_ns,
        "delivery_count": message.delivery_count,
    });
    if let Some(epoch) = epoch {
        object["epoch"] = format!("{epoch:016x}").into();
    }
    if let Some(reply_to) = &message.reply_to {
        object["reply_to"] = reply_to.as_str().into();
    }
    if nacked {
        object["nacked"] = true.into();
    }
    if !message.headers.is_empty() {
        object["headers"] = message
            .headers
            .iter()
            .map(|(name, value)| serde_json::json!([name, String::from_utf8_lossy(value)]))
            .collect::<Vec<_>>()
            .into();
    }
    match std::str::from_utf8(&message.payload) {
        Ok(text) => object["payload"] = text.into(),
        Err(_) => {
            object["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&message.payload)
                .into()
        }
    }
    object.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_payloads_onto_one_line() {
        let mut message = Delivery {
            topic: "t".into(),
            seq: 7,
            timestamp_ns: 1,
            delivery_count: 2,
            reply_to: None,
            headers: Vec::new(),
            payload: b"two\nlines \"quoted\"".to_vec(),
        };
        let line = message_json(&message, Some(255), false);
        assert!(!line.contains('\n'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["payload"], "two\nlines \"quoted\"");
        assert_eq!(parsed["seq"], 7);
        assert_eq!(parsed["delivery_count"], 2);
        assert_eq!(parsed["epoch"], "00000000000000ff");
        message.payload = vec![0xff, 0x00, 0x80];
        let parsed: serde_json::Value =
            serde_json::from_str(&message_json(&message, None, true)).unwrap();
        assert_eq!(parsed["payload_base64"], "/wCA");
        assert_eq!(parsed["nacked"], true);
        assert!(parsed.get("payload").is_none());
    }
}
