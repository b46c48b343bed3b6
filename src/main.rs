//! The `corebus` binary: parse the command line and run the command.

use std::process::ExitCode;

use clap::Parser;
use corebus::cli::{Cli, Command, TopicCommand};

/// See Cargo.toml: a message's allocation and free are on the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Parsed again with the config file merged in (flag > env > file > default).
        Command::Serve(_) => {
            match corebus::settings::resolve_serve(std::env::args_os().collect()) {
                Ok(settings) => corebus::commands::serve(&settings),
                Err(message) if message.starts_with("error:") => {
                    eprint!("{message}");
                    return ExitCode::from(2);
                }
                Err(message) => Err(message.into()),
            }
        }
        Command::Pub(args) => corebus::commands::publish(&args),
        Command::Sub(args) => corebus::commands::subscribe(&args),
        Command::Request(args) => corebus::commands::request(&args),
        Command::Reply(args) => corebus::commands::reply(&args),
        Command::Ping(args) => corebus::commands::ping(&args),
        Command::Topic(TopicCommand::Create(args)) => corebus::commands::create_topic(&args),
        Command::Topic(TopicCommand::Delete(args)) => corebus::commands::delete_topic(&args),
        Command::Topic(TopicCommand::List(args)) => corebus::commands::list_topics(&args),
        Command::Bench(args) => corebus::bench::run(&args),
        Command::Inspect(args) => corebus::watch::inspect(&args),
        Command::Top(args) => corebus::watch::top(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("corebus: {error}");
            ExitCode::FAILURE
        }
    }
}
