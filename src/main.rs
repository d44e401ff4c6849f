use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = storageos_fuse::cli::parse();
    // kube_client logs each failed request at ERROR; the product reports it once, in context.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,storageos_fuse=info,kube_client=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: the background server's stderr is its log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log that cannot be written (the data dir's file system is full) must never
        // stop the server: tracing-subscriber's own report of it uses eprintln!, which
        // panics when stderr fails.
        .log_internal_errors(false)
        .with_target(false)
        .init();
    match storageos_fuse::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
