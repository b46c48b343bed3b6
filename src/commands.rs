//! What each CLI command does, so `main.rs` stays a few lines.

use std::error::Error;
use std::io::Write;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{CreateTopicArgs, DeleteTopicArgs, PubArgs, ServeArgs, SubArgs};
use crate::client::Client;
use crate::server::Broker;

type CommandResult = Result<(), Box<dyn Error>>;

/// Runs the broker until SIGINT or SIGTERM, then stops it gracefully.
pub fn serve(args: &ServeArgs) -> CommandResult {
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_target(false)
        .init();
    let config = args.to_config();
    // Registered before the listeners exist, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let broker = Broker::start(config)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", broker.ready_line())?;
    stdout.flush()?;
    drop(stdout);
    if let Some(signal) = signals.forever().next() {
        log::info!("event=signal signal={signal}");
    }
    let counters = broker.shutdown()?;
    log::info!("event=stopped counters={counters:?}");
    Ok(())
}

pub fn publish(args: &PubArgs) -> CommandResult {
    let mut client = Client::connect(&args.addr)?;
    if args.confirm {
        let seq = client.publish_confirmed(&args.topic, args.message.as_bytes())?;
        println!("published {} seq={seq}", args.topic);
    } else {
        client.publish(&args.topic, args.message.as_bytes())?;
        // A round trip, so a refusal (bad topic, too large) is reported before exiting.
        client.ping()?;
        if let Some(error) = client.take_async_errors().0.into_iter().next() {
            return Err(Box::new(crate::client::Error::Server(error)));
        }
        println!("published {}", args.topic);
    }
    client.close()?;
    Ok(())
}

pub fn create_topic(args: &CreateTopicArgs) -> CommandResult {
    let mut client = Client::connect(&args.addr)?;
    let position = client.create_topic(&args.topic, args.options())?;
    println!("created {} epoch={}", args.topic, position.epoch);
    client.close()?;
    Ok(())
}

pub fn delete_topic(args: &DeleteTopicArgs) -> CommandResult {
    let mut client = Client::connect(&args.addr)?;
    client.delete_topic(&args.topic)?;
    println!("deleted {}", args.topic);
    client.close()?;
    Ok(())
}

pub fn subscribe(args: &SubArgs) -> CommandResult {
    let mut client = Client::connect(&args.addr)?;
    let options = args.options()?;
    let mut subscription = client.subscribe_with(&args.subject, options)?;
    eprintln!("subscribed to {}", args.subject);
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
        if args.ack {
            client.ack_message(&subscription, &message)?;
            refused_acks(&mut client)?;
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{} seq={} {}",
            message.topic,
            message.seq,
            String::from_utf8_lossy(&message.payload)
        )?;
        stdout.flush()?;
    }
    if args.ack {
        // Acks are answered only when refused: one round trip collects any still on the way.
        client.ping()?;
        refused_acks(&mut client)?;
    }
    Ok(())
}

/// Fails with the broker's reason if it refused an ack (the message would come back).
fn refused_acks(client: &mut Client) -> CommandResult {
    match client.take_async_errors().0.into_iter().next() {
        Some(error) => Err(format!("an ack was refused: {error}").into()),
        None => Ok(()),
    }
}
