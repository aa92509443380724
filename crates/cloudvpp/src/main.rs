//! The `cloudvpp` binary: logging, then the command line ([`cloudvpp::Cli`]), then the
//! exit code.

use clap::Parser;

#[tokio::main]
async fn main() {
    // One crypto provider for the whole process (ring), chosen explicitly so rustls
    // never has to guess between providers pulled in by dependencies.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cloudvpp::quiet_on_closed_pipe();
    let cli = cloudvpp::Cli::parse();
    cloudvpp::telemetry::init_logging(cli.log_format);
    if let Err(e) = cloudvpp::run(cli).await {
        eprintln!("cloudvpp: {}", cloudvpp::error_report(&e));
        let code = match (
            e.downcast_ref::<cloudvpp::server::Fatal>(),
            e.downcast_ref::<cloudvpp::Exit>(),
        ) {
            (Some(_), _) => cloudvpp::server::Fatal::EXIT_CODE,
            (None, Some(exit)) => exit.code,
            (None, None) => 1,
        };
        std::process::exit(code);
    }
}
