//! `cloudvpp`: Apple's Apps and Books service and an MDM with its invitation engine, in one
//! binary. This is the CLI root: [`Cli`] and its subcommands, one module of [`cmd`] each.
//! [`server`] assembles the services for the three server commands (and for tests,
//! in-process); [`flags`] holds the flag groups they share.

pub mod cmd;
pub mod flags;
pub mod listener;
pub mod openapi;
pub mod server;
pub mod telemetry;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// `cloudvpp --version`: the package version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CLOUDVPP_COMMIT"),
    ")"
);

/// The command line.
#[derive(Parser)]
#[command(
    name = "cloudvpp",
    version = VERSION,
    about = "Apple Apps and Books service and MDM, in one binary"
)]
pub struct Cli {
    /// Log format on stderr: text, or one JSON object per line (filter with RUST_LOG).
    #[arg(
        long,
        global = true,
        env = "CLOUDVPP_LOG_FORMAT",
        value_enum,
        default_value_t = telemetry::LogFormat::Text
    )]
    pub log_format: telemetry::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// The Apps and Books service (Apple's App and Book Management API v2).
    Appsbooks {
        /// What to do.
        #[command(subcommand)]
        command: cmd::appsbooks::AppsbooksCommand,
    },
    /// The MDM service and its admin API client.
    Mdm {
        /// What to do.
        #[command(subcommand)]
        command: cmd::mdm::MdmCommand,
    },
    /// Both services in one process on one database, wired to each other.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Invite people: register them with Apps and Books and send InviteToProgram.
    Invite(cmd::invite::InviteArgs),
    /// List invitations and where each person stands; resend or retire them.
    Invitations(cmd::invitations::InvitationsArgs),
    /// Assign an app or book to people already invited (one, or a CSV).
    Assign(cmd::licences::AssignArgs),
    /// List licence assignments and where each stands.
    Assignments(cmd::licences::AssignmentsArgs),
    /// Simulated Apple devices: PKI, enrollment, polling, load bodies.
    Simulate {
        /// What to do.
        #[command(subcommand)]
        command: cmd::simulate::SimulateCommand,
    },
    /// Print a shell completion script: `cloudvpp completions bash > /etc/bash_completion.d/cloudvpp`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `cloudvpp man | man -l -`.
    Man,
}

/// Runs a parsed command line. A server whose background task was given up ends with
/// [`server::Fatal`].
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Appsbooks { command } => cmd::appsbooks::run(command).await,
        Command::Mdm { command } => cmd::mdm::run(command).await,
        Command::Simulate { command } => cmd::simulate::run(command).await,
        Command::Serve(a) => cmd::serve::run(*a).await,
        Command::Invite(a) => cmd::invite::invite(a).await,
        Command::Invitations(a) => cmd::invitations::run(a).await,
        Command::Assign(a) => cmd::licences::assign(a).await,
        Command::Assignments(a) => cmd::licences::assignments(a).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "cloudvpp", &mut script);
            write_stdout(&script)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            write_stdout(&page)
        }
    }
}

/// A command's end that is not plain success, with its exit code: the binary prints
/// `message` and exits with `code` (documented in the command's `--help`).
#[derive(Debug)]
pub struct Exit {
    /// The process's exit code.
    pub code: i32,
    /// What went wrong, in one line.
    pub message: String,
}

impl Exit {
    /// An exit with `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Writes `bytes` to standard output; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `e` and its causes on one line, each cause once: a library often repeats its cause in
/// its own message (sqlx does), and the chain would otherwise say the same thing three
/// times.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Makes a closed standard output (`cloudvpp invitations | head`) end the process quietly
/// with success, as `head` expects, instead of a panic: Rust ignores SIGPIPE, so `println!`
/// to a closed pipe panics with a broken-pipe message, caught here.
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}
