//! The `cloudvpp` binary: logging, then the command line ([`cloudvpp::Cli`]), then the
//! exit code.

use clap::Parser;

#[tokio::main]
async fn main() {
    // One crypto provider for the whole process (ring), chosen explicitly so rustls
    // never has to guess between providers pulled in by dependencies.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cloudvpp::quiet_on_closed_pipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDVPP_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs sent to files and collectors stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = cloudvpp::run(cloudvpp::Cli::parse()).await {
        eprintln!("cloudvpp: {}", cloudvpp::error_report(&e));
        let code = match e.downcast_ref::<cloudvpp::server::Fatal>() {
            Some(_) => cloudvpp::server::Fatal::EXIT_CODE,
            None => 1,
        };
        std::process::exit(code);
    }
}
