//! Where each `serve` setting comes from: flag > environment variable > config file > default.
//!
//! `clap` already knows flags, environment variables and defaults, and the flag definitions in
//! [`crate::cli::ServeArgs`] are the single list of settings: the config file's keys, the
//! annotated example ([`example_config`]) and `serve --print-config` are all derived from
//! them, so none can drift. The file slots in between environment and default like this:
//!
//! 1. Parse the command line once; this finds `--config` (or `COREBUS_CONFIG`).
//! 2. Read the file (TOML, top-level keys only; a key is a flag's name without `--`, dashes
//!    or underscores). Each key must name a flag and each value must pass that flag's own
//!    parser, checked one by one so an error names the key and the file line.
//! 3. For every key whose flag came from neither the command line nor the environment, append
//!    the flag to the command line, and parse again. What the operator typed or exported
//!    still wins; the file beats only the defaults.
//! 4. Limits still at their defaults are lowered to fit the memory available
//!    ([`Config::fit_to_memory`]); explicit ones are kept, and overcommitting ones warned about.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::{Cli, ServeArgs};
use crate::config::{Config, FittedLimit, DEFAULTS_MEMORY_SHARE_DIVISOR};

/// Flags of `serve` that are about this invocation, not settings of the broker.
const NOT_SETTINGS: [&str; 5] = [
    "config",
    "print-config",
    "example-config",
    "help",
    "version",
];

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File {
        path: PathBuf,
        line: usize,
    },
    Default,
    /// A default lowered to fit the memory available.
    Fitted {
        default: usize,
        budget_bytes: usize,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Default => f.write_str("default"),
            Source::Fitted {
                default,
                budget_bytes,
            } => write!(
                f,
                "default {default}, lowered to fit {} MiB (1/{DEFAULTS_MEMORY_SHARE_DIVISOR} of \
                 MemAvailable)",
                budget_bytes >> 20
            ),
        }
    }
}

/// One setting as `--print-config` shows it.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The flag's long name, which is also the config file key.
    pub key: String,
    /// The value as TOML text, or None when unset (a flag with no default).
    pub value: Option<String>,
    pub source: Source,
}

/// `serve`'s settings after merging every source.
#[derive(Debug)]
pub struct ServeSettings {
    pub args: ServeArgs,
    pub config: Config,
    pub settings: Vec<Setting>,
}

/// Parses the command line (`argv`, the program name first) for `serve`, merging the config
/// file. The error is a complete message naming what was wrong, and where.
pub fn resolve_serve(argv: Vec<OsString>) -> Result<ServeSettings, String> {
    resolve_serve_with(argv, crate::config::available_memory_bytes())
}

/// [`resolve_serve`] for a machine with `available_bytes` of memory (None: unknown, nothing
/// is fitted).
pub fn resolve_serve_with(
    argv: Vec<OsString>,
    available_bytes: Option<usize>,
) -> Result<ServeSettings, String> {
    let first = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| e.render().to_string())?;
    let serve = serve_matches(&first)?;
    let mut argv = argv;
    let mut from_file: Vec<(String, PathBuf, usize)> = Vec::new();
    if let Some(path) = serve.get_one::<PathBuf>("config") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        for entry in parse_file(path, &text)? {
            let id = entry.id.as_str();
            let from_user = matches!(
                serve.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !from_user {
                argv.extend(entry.args.into_iter().map(OsString::from));
                from_file.push((entry.id, path.clone(), entry.line));
            }
        }
    }
    let merged = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| e.render().to_string())?;
    let serve = serve_matches(&merged)?;
    let args = ServeArgs::from_arg_matches(serve).map_err(|e| e.render().to_string())?;
    let mut config = args.to_config();

    let serve_command = serve_command();
    let mut settings = Vec::new();
    for arg in serve_command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(key) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&key) {
            continue;
        }
        let source = if let Some((_, path, line)) = from_file.iter().find(|(i, ..)| i == id) {
            Source::File {
                path: path.clone(),
                line: *line,
            }
        } else {
            match serve.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env(
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => Source::Default,
            }
        };
        // A switch is shown as what it parsed to (`COREBUS_NO_PIN=1` is `true`), so that the
        // printed config reads back as a config file.
        let value = match serve.try_get_one::<bool>(id) {
            Ok(Some(switch)) => Some(switch.to_string()),
            _ => serve
                .get_raw(id)
                .map(|values| {
                    values
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .map(|raw| toml_text(&raw)),
        };
        settings.push(Setting {
            key: key.to_string(),
            value,
            source,
        });
    }
    // `shards` has no clap default: it is one per core, or one per listed core.
    if let Some(setting) = settings.iter_mut().find(|s| s.key == "shards") {
        if setting.value.is_none() {
            setting.value = Some(config.shards.to_string());
        }
    }

    if let Some(available) = available_bytes {
        let budget_bytes = available / DEFAULTS_MEMORY_SHARE_DIVISOR;
        let adjustable: Vec<FittedLimit> = FittedLimit::ALL
            .into_iter()
            .filter(|limit| {
                settings
                    .iter()
                    .any(|s| s.key == limit.flag() && s.source == Source::Default)
            })
            .collect();
        for (limit, default, new) in config.fit_to_memory(budget_bytes, &adjustable) {
            if let Some(setting) = settings.iter_mut().find(|s| s.key == limit.flag()) {
                setting.value = Some(new.to_string());
                setting.source = Source::Fitted {
                    default,
                    budget_bytes,
                };
            }
        }
    }
    Ok(ServeSettings {
        args,
        config,
        settings,
    })
}

fn serve_matches(matches: &ArgMatches) -> Result<&ArgMatches, String> {
    matches
        .subcommand_matches("serve")
        .ok_or_else(|| "not a serve command line".to_string())
}

fn serve_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve")
        .expect("serve is a subcommand")
        .clone()
}

/// A switch's value in the file, in any spelling its environment variable takes: clap's own
/// parser for those (`BoolishValueParser`) decides, so the two cannot disagree.
fn switch_value(serve: &clap::Command, arg: &clap::Arg, value: &toml_edit::Value) -> Option<bool> {
    let text = match value {
        toml_edit::Value::Boolean(b) => b.value().to_string(),
        toml_edit::Value::Integer(i) => i.value().to_string(),
        toml_edit::Value::String(s) => s.value().clone(),
        _ => return None,
    };
    clap::builder::TypedValueParser::parse_ref(
        &clap::builder::BoolishValueParser::new(),
        serve,
        Some(arg),
        std::ffi::OsStr::new(&text),
    )
    .ok()
}

/// A raw value as TOML: numbers and booleans bare, everything else a quoted string.
fn toml_text(raw: &str) -> String {
    if raw.parse::<i64>().is_ok() || raw == "true" || raw == "false" {
        raw.to_string()
    } else {
        format!("{raw:?}")
    }
}

/// One key of the config file, as the flags it stands for.
struct FileEntry {
    id: String,
    line: usize,
    args: Vec<String>,
}

/// Parses and checks the config file: every key a `serve` flag, every value one that flag
/// accepts. Errors name the file, the line and the key.
fn parse_file(path: &Path, text: &str) -> Result<Vec<FileEntry>, String> {
    let at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let document = toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |span| at(span.start));
        format!("{}:{line}: not valid TOML: {}", path.display(), e.message())
    })?;
    let serve = serve_command();
    let table = document.as_table();
    let mut entries = Vec::new();
    for (name, _) in table.iter() {
        let (key, item) = table.get_key_value(name).expect("listed by iter");
        let line = key.span().map_or(1, |span| at(span.start));
        let here = format!("{}:{line}", path.display());
        let long = name.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_SETTINGS.contains(&long.as_str()))
            .ok_or_else(|| {
                format!(
                    "{here}: unknown key `{name}`; the keys are `corebus serve` flags without \
                     `--` (`corebus serve --example-config` lists them all)"
                )
            })?;
        let value = item.as_value().ok_or_else(|| {
            format!("{here}: `{name}` must be a value (a number, a string or true/false)")
        })?;
        let flag = format!("--{long}");
        let args = if matches!(arg.get_action(), ArgAction::SetTrue) {
            match switch_value(&serve, arg, value) {
                Some(true) => vec![flag],
                Some(false) => Vec::new(),
                None => {
                    return Err(format!(
                        "{here}: `{name}` must be true or false (or 1/0, yes/no, on/off)"
                    ))
                }
            }
        } else {
            let text = match value {
                toml_edit::Value::String(s) => s.value().clone(),
                toml_edit::Value::Integer(i) => i.value().to_string(),
                toml_edit::Value::Float(f) => f.value().to_string(),
                toml_edit::Value::Boolean(b) => b.value().to_string(),
                _ => {
                    return Err(format!(
                        "{here}: `{name}` must be a number or a string, not a date, array or \
                         table"
                    ))
                }
            };
            vec![flag, text]
        };
        // The flag's own parser checks the value, alone, so the error can point here.
        if let Err(error) = serve
            .clone()
            .no_binary_name(true)
            .try_get_matches_from(&args)
        {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let reason = first.strip_prefix("error: ").unwrap_or(first);
            return Err(format!("{here}: bad value for `{name}`: {reason}"));
        }
        entries.push(FileEntry {
            id: arg.get_id().as_str().to_string(),
            line,
            args,
        });
    }
    Ok(entries)
}

/// `serve --print-config`: the effective configuration as a config file, each line saying
/// where its value came from.
pub fn print_config(settings: &[Setting]) -> String {
    let mut out = String::from(
        "# The effective configuration of `corebus serve` (flag > environment > file > default).\n\
         # Valid as a --config file.\n",
    );
    let width = settings
        .iter()
        .map(|s| s.key.len() + 3 + s.value.as_ref().map_or(0, String::len))
        .max()
        .unwrap_or(0);
    for setting in settings {
        let line = match &setting.value {
            Some(value) => format!("{} = {value}", setting.key),
            None => format!("# {} (not set)", setting.key),
        };
        let _ = writeln!(out, "{line:width$}  # {}", setting.source);
    }
    out
}

/// The annotated example config file: every `serve` setting, its help, its environment
/// variable and its default, commented out. `corebus.example.toml` is this text (a test
/// checks), and `corebus serve --example-config` prints it.
pub fn example_config() -> String {
    let mut out = String::from(
        "# corebus.toml: an example config file for `corebus serve --config corebus.toml`.\n\
         # Generated by `corebus serve --example-config` from the flags' own definitions.\n\
         # Every key is a `corebus serve` flag without `--`; each line below is commented out\n\
         # at its default. Precedence: flag > environment variable > this file > default.\n\
         # Limits are explained in tuning.md.\n",
    );
    for arg in serve_command().get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&key) {
            continue;
        }
        out.push('\n');
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        for line in wrap(&help, 96) {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(
                out,
                "# (flag --{key}, environment {})",
                env.to_string_lossy()
            );
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            let _ = writeln!(out, "#{key} = false");
        } else if defaults.is_empty() {
            let _ = writeln!(out, "#{key} = ... (no default)");
        } else {
            let _ = writeln!(out, "#{key} = {}", toml_text(&defaults.join(",")));
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        ["corebus", "serve"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect()
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "corebus-settings-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn source_of<'a>(settings: &'a ServeSettings, key: &str) -> &'a Source {
        &settings
            .settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no setting {key}"))
            .source
    }

    #[test]
    fn the_example_config_in_the_repository_is_the_generated_one() {
        assert_eq!(
            include_str!("../corebus.example.toml"),
            example_config(),
            "regenerate it: cargo run -- serve --example-config > corebus.example.toml"
        );
    }

    #[test]
    fn the_example_config_uncommented_is_a_valid_file_of_defaults() {
        let uncommented: String = example_config()
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| !line.starts_with(' ') && !line.contains("(no default)"))
            .map(|line| format!("{line}\n"))
            .collect();
        let path = file("example", &uncommented);
        let resolved =
            resolve_serve_with(argv(&["--config", path.to_str().unwrap()]), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        let defaults = Config::default();
        assert_eq!(resolved.config.connections_max, defaults.connections_max);
        assert_eq!(resolved.config.consumer_ttl_ms, defaults.consumer_ttl_ms);
        assert_eq!(
            resolved.config.handshake_timeout_ms,
            defaults.handshake_timeout_ms
        );
        assert!(matches!(
            source_of(&resolved, "connections-max"),
            Source::File { .. }
        ));
    }

    /// A switch in the file takes the spellings its environment variable does.
    #[test]
    fn switches_in_the_file_take_one_zero_yes_and_no() {
        let path = file(
            "switches",
            "no-pin = 1
no-http = \"yes\"
no-resp = \"off\"
",
        );
        let config = path.to_str().unwrap();
        let resolved = resolve_serve_with(argv(&["--config", config]), None).unwrap();
        assert!(!resolved.config.pin);
        assert!(resolved.config.http_listen.is_none());
        assert!(resolved.config.resp_listen.is_some());
    }

    /// flag > env > file > default, for one key each way.
    #[test]
    fn precedence_is_flag_then_env_then_file_then_default() {
        let path = file(
            "precedence",
            "# a comment\nring-slots = 64\nring_batch_max = 32\nconsumer-ttl = \"5m\"\nno-pin = true\n",
        );
        let config = path.to_str().unwrap();
        // ring-slots: flag over file. ring-batch-max: file. consumer-ttl: file over default.
        // read-chunk-bytes: default.
        let resolved =
            resolve_serve_with(argv(&["--config", config, "--ring-slots", "128"]), None).unwrap();
        assert_eq!(resolved.config.ring_slots, 128);
        assert_eq!(*source_of(&resolved, "ring-slots"), Source::Flag);
        assert_eq!(resolved.config.ring_batch_max, 32);
        assert_eq!(
            *source_of(&resolved, "ring-batch-max"),
            Source::File {
                path: path.clone(),
                line: 3
            }
        );
        assert_eq!(resolved.config.consumer_ttl_ms, 300_000);
        assert!(!resolved.config.pin);
        assert_eq!(*source_of(&resolved, "read-chunk-bytes"), Source::Default);
        // The environment beats the file (tested in-process through clap's env lookup would
        // race other tests; tests/cli.rs covers it with a real process).
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_names_the_key_and_the_line() {
        let check = |text: &str, expect: &[&str]| {
            let path = file("bad", text);
            let error =
                resolve_serve_with(argv(&["--config", path.to_str().unwrap()]), None).unwrap_err();
            std::fs::remove_file(&path).unwrap();
            for needle in expect {
                assert!(
                    error.contains(needle),
                    "{error:?} should contain {needle:?}"
                );
            }
        };
        check(
            "shards = 2\nconections-max = 5\n",
            &[":2: unknown key `conections-max`"],
        );
        check(
            "\n\nring-slots = \"many\"\n",
            &[":3: bad value for `ring-slots`", "many"],
        );
        check(
            "consumer-ttl = \"soon\"\n",
            &[":1: bad value for `consumer-ttl`", "soon"],
        );
        check("no-pin = 3\n", &[":1: `no-pin` must be true or false"]);
        check("ring-slots = 1\nring-slots = 2\n", &["not valid TOML"]);
        check("[serve]\nshards = 1\n", &[":1: unknown key `serve`"]);
        check("config = \"other.toml\"\n", &[":1: unknown key `config`"]);
    }

    /// Issue 11, defect 4: default limits fit the machine; explicit ones are kept.
    #[test]
    fn unset_limits_are_fitted_to_memory_and_set_ones_are_not() {
        const GIB: usize = 1 << 30;
        let resolved = resolve_serve_with(argv(&["--shards", "2"]), Some(24 * GIB)).unwrap();
        assert!(resolved.config.memory_budget().total_bytes() <= 12 * GIB);
        assert!(matches!(
            source_of(&resolved, "connections-max"),
            Source::Fitted {
                default: 10_000,
                ..
            }
        ));
        let text = print_config(&resolved.settings);
        assert!(text.contains("lowered to fit 12288 MiB"), "{text}");

        let resolved = resolve_serve_with(
            argv(&["--shards", "2", "--connections-max", "10000"]),
            Some(24 * GIB),
        )
        .unwrap();
        assert_eq!(resolved.config.connections_max, 10_000);
        assert_eq!(*source_of(&resolved, "connections-max"), Source::Flag);
        // The rest still give way as far as they can.
        assert!(resolved.config.topics_max < 10_000);
    }

    #[test]
    fn print_config_is_a_valid_config_file() {
        let resolved = resolve_serve_with(argv(&["--ring-slots", "99"]), Some(8 << 30)).unwrap();
        let text = print_config(&resolved.settings);
        assert!(text.contains("ring-slots = 99"), "{text}");
        assert!(text.contains("# flag"), "{text}");
        let path = file("printed", &text);
        let again = resolve_serve_with(argv(&["--config", path.to_str().unwrap()]), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(again.config.ring_slots, 99);
        assert_eq!(
            again.config.connections_max,
            resolved.config.connections_max
        );
    }
}
