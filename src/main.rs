use std::process::ExitCode;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// The most verbose level let through for an HTTP/Kubernetes client crate, whatever
/// RUST_LOG says (`None`: nothing). These crates see Secret bodies: kube_client logs a whole
/// response body (every Secret's key data) at WARN when it fails to parse it, and the HTTP
/// layers below it trace what they send and receive. Key material is never logged, so
/// their logs are capped here, after RUST_LOG, where no directive can lift the cap.
/// kube_client is off entirely: it also logs each failed request at ERROR, and the product
/// reports those once, in context.
fn dependency_cap(target: &str) -> Option<Option<Level>> {
    let krate = target.split("::").next().unwrap_or(target);
    match krate {
        "kube_client" | "kube" => Some(None),
        "kube_runtime" | "hyper" | "hyper_util" | "h2" | "tower" | "tower_http" | "rustls"
        | "http_body_util" | "reqwest" => Some(Some(Level::WARN)),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = storageos_fuse::cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,storageos_fuse=info"));
    let cap = filter_fn(|meta| match dependency_cap(meta.target()) {
        None => true,
        Some(None) => false,
        Some(Some(max)) => *meta.level() <= max,
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(cap)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only on a terminal: the background server's stderr is its log file.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                // A log that cannot be written (the data dir's file system is full) must
                // never stop the server: tracing-subscriber's own report of it uses
                // eprintln!, which panics when stderr fails.
                .log_internal_errors(false)
                .with_target(false),
        )
        .init();
    match storageos_fuse::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
