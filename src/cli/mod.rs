//! The command line: parse (flags in `args`), build the manager for the chosen key source,
//! run the command, print results. Errors come back to `main` as one `error:` line.

pub mod args;

use std::io::Write;

use clap::Parser;

pub use args::Cli;
use args::{Command, GlobalArgs, KeySource, KeysCommand, OutputFormat, VolumeCommand};
use std::sync::Arc;

use crate::daemon::mount::{MountRequest, run_mount, run_umount};
use crate::daemon::serve::{ServeRequest, run_serve};
use crate::error::{Error, Result};
use crate::keys::kube::{KubeConnect, KubeStore, spawn_kube_watcher};
use crate::keys::{self, DirStore, KeyStore, Keyring, WatchHandle};
use crate::manager::{CreateRequest, Manager};
use crate::volume::VolumeStore;
use crate::volume::size::format_size;

/// Parses the process arguments. Usage errors become one `error:` line and exit status 2.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            // clap puts what is missing or wrong on the lines after the first (for
            // example the required flags): keep everything before the usage, on one line.
            let first = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let first = if first.is_empty() {
                "error: invalid arguments"
            } else {
                first.as_str()
            };
            let first = if first.starts_with("error:") {
                first.to_string()
            } else {
                format!("error: {first}")
            };
            eprintln!("{first} (see `storageos-fuse --help`)");
            std::process::exit(2);
        }
    }
}

fn dir_store(g: &GlobalArgs) -> DirStore {
    let dir = g
        .keys_dir
        .clone()
        .unwrap_or_else(|| g.data_dir.join("keys"));
    DirStore::new(dir, g.key_namespace.clone())
}

pub fn key_store(g: &GlobalArgs) -> Result<Box<dyn KeyStore>> {
    match g.key_source {
        KeySource::Dir => Ok(Box::new(dir_store(g))),
        KeySource::Kube => Ok(Box::new(KubeStore::connect(&KubeConnect::new(
            g.key_namespace.clone(),
        ))?)),
    }
}

/// The live keyring of the configured key source, kept current by the source's watcher
/// while the returned handle lives. The one place a daemon chooses its key source.
pub fn live_keyring(g: &GlobalArgs) -> Result<(Arc<Keyring>, WatchHandle)> {
    let ring = Keyring::new();
    match g.key_source {
        KeySource::Dir => {
            let handle = crate::keys::spawn_dir_watcher(dir_store(g), ring.clone())
                .map_err(|e| Error::Io(e.to_string()))?;
            Ok((ring, handle))
        }
        KeySource::Kube => {
            let watcher =
                spawn_kube_watcher(&KubeConnect::new(g.key_namespace.clone()), ring.clone())?;
            Ok((ring, WatchHandle::new(move || watcher.stop())))
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(done) = generated(&cli.command) {
        return done;
    }
    let mgr = Manager::new(
        VolumeStore::new(&cli.global.data_dir),
        key_store(&cli.global)?,
    );
    match cli.command {
        Command::Volume(cmd) => volume(&mgr, cmd),
        Command::Mount(a) => run_mount(
            &mgr,
            &MountRequest {
                volume: a.volume,
                at: a.at,
                background: a.background,
                threads: a.threads.clamp(1, 64),
                allow_other: a.allow_other,
                backing_io: a.backing_io.into(),
            },
        ),
        Command::Umount { target } => run_umount(&mgr, &target),
        Command::Serve(a) => {
            let (keyring, _watch) = live_keyring(&cli.global)?;
            run_serve(
                &mgr,
                keyring,
                &ServeRequest {
                    mountpoint: Some(a.mountpoint),
                    threads: a.threads.clamp(1, 64),
                    allow_other: a.allow_other,
                    listen: a.listen,
                    backing_io: a.backing_io.into(),
                },
            )
        }
        Command::Keys(KeysCommand::Status) => keys_status(&mgr),
        Command::Keys(KeysCommand::Backup { out }) => keys_backup(&mgr, &out),
        Command::Keys(KeysCommand::Restore { files }) => keys_restore(&mgr, &files),
        Command::Completions { .. } | Command::Manpage | Command::Benchmark { .. } => {
            unreachable!("handled before the manager is built")
        }
    }
}

/// `completions` and `manpage` need no data dir or keys: print from the clap definitions.
fn generated(command: &Command) -> Option<Result<()>> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "storageos-fuse", &mut out);
            Some(Ok(()))
        }
        Command::Manpage => Some(match clap_mangen::Man::new(cmd).render(&mut out) {
            // `manpage | head` closing the pipe early is not an error.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Error::Io(format!("cannot write the manual page: {e}")))
            }
            _ => Ok(()),
        }),
        Command::Benchmark { output } => Some(benchmark(*output)),
        _ => None,
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::Io(e.to_string()))?;
    writeln!(out).map_err(|e| Error::Io(e.to_string()))
}

fn print_yaml<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_saphyr::to_string(v).map_err(|e| Error::Io(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .map_err(|e| Error::Io(e.to_string()))?;
    if !text.ends_with('\n') {
        writeln!(out).map_err(|e| Error::Io(e.to_string()))?;
    }
    Ok(())
}

fn volume(mgr: &Manager, cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            volume,
            size,
            labels,
            sector_size,
        } => {
            let meta = mgr.create(&CreateRequest {
                volume,
                size,
                labels,
                sector_size,
            })?;
            let keys = mgr.load_keys()?;
            print_json(&mgr.view(&meta, &keys))
        }
        VolumeCommand::Inspect { volume } => {
            let meta = mgr.find(&volume)?;
            let keys = mgr.load_keys()?;
            print_json(&mgr.view(&meta, &keys))
        }
        VolumeCommand::List { output } => {
            let (vols, issues) = mgr.store.list()?;
            for i in issues {
                tracing::warn!("skipped unreadable volume: {i}");
            }
            let keys = mgr.load_keys()?;
            let views: Vec<_> = vols.iter().map(|m| mgr.view(m, &keys)).collect();
            match output {
                OutputFormat::Json => print_json(&views),
                OutputFormat::Yaml => print_yaml(&views),
                OutputFormat::Table => {
                    let rows: Vec<[String; 6]> = views
                        .iter()
                        .map(|v| {
                            [
                                v.namespace.clone(),
                                v.name.clone(),
                                v.id.clone(),
                                format_size(v.size_bytes),
                                if v.encrypted {
                                    "yes".into()
                                } else {
                                    "no".into()
                                },
                                v.key_status.as_str().into(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["NAMESPACE", "NAME", "ID", "SIZE", "ENCRYPTED", "KEY"],
                        &rows,
                    );
                    Ok(())
                }
            }
        }
        VolumeCommand::Update { volume, labels } => {
            let meta = mgr.update_labels(&volume, &labels)?;
            let keys = mgr.load_keys()?;
            print_json(&mgr.view(&meta, &keys))
        }
        VolumeCommand::Delete { volume } => {
            let meta = mgr.delete(&volume)?;
            println!("deleted volume {} ({})", meta.display_name(), meta.id);
            Ok(())
        }
    }
}

/// `benchmark`: XTS throughput of 4 KiB sectors, one thread, about a second per direction.
fn benchmark(output: OutputFormat) -> Result<()> {
    let r = crate::crypt::benchmark_xts(4096, std::time::Duration::from_secs(1))
        .map_err(|e| Error::Io(e.to_string()))?;
    match output {
        OutputFormat::Json => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &r).map_err(|e| Error::Io(e.to_string()))?;
            writeln!(out).map_err(|e| Error::Io(e.to_string()))
        }
        OutputFormat::Yaml => print_yaml(&r),
        OutputFormat::Table => {
            println!("# Tests are approximate, single thread, memory only (no storage I/O).");
            println!(
                "{:>9}   {:>8}   {:>11}   {:>16}   {:>16}",
                "Algorithm", "Key", "Sector", "Encryption", "Decryption"
            );
            println!(
                "{:>9}   {:>7}b   {:>10}B   {:>10.1} MiB/s   {:>10.1} MiB/s",
                r.cipher, r.key_bits, r.sector_size, r.encrypt_mib_s, r.decrypt_mib_s
            );
            Ok(())
        }
    }
}

fn keys_status(mgr: &Manager) -> Result<()> {
    let rows: Vec<[String; 3]> = mgr
        .key_statuses()?
        .into_iter()
        .map(|(name, (meta, status))| [name, meta.id, status.as_str().to_string()])
        .collect();
    print_table(&["VOLUME", "ID", "KEY"], &rows);
    Ok(())
}

fn keys_backup(mgr: &Manager, out: &std::path::Path) -> Result<()> {
    use std::io::IsTerminal;
    // A one-line counter, only for a person watching a terminal.
    let tty = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rbacking up Secrets: {done}/{total}");
            if done == total {
                eprint!("\r\x1b[K");
            }
        }
    };
    let written = keys::backup_to_dir_with(mgr.keys.as_ref(), out, &mut progress)?;
    for p in &written {
        println!("{}", p.display());
    }
    eprintln!(
        "backed up {} Secret(s) from {} to {}",
        written.len(),
        mgr.keys.location(),
        out.display()
    );
    Ok(())
}

fn keys_restore(mgr: &Manager, files: &[std::path::PathBuf]) -> Result<()> {
    let plan = keys::read_restore_files(files)?;
    for note in &plan.skipped {
        eprintln!("note: {note}");
    }
    for outcome in keys::restore(mgr.keys.as_ref(), &plan)? {
        match outcome {
            keys::RestoreOutcome::Created(name) => println!("secret/{name} restored"),
            keys::RestoreOutcome::Unchanged(name) => {
                println!("secret/{name} unchanged (identical Secret already there)")
            }
        }
    }
    Ok(())
}

/// kubectl-style table: left-aligned columns, three spaces apart; the header is bold only
/// when stdout is a terminal (scripts and pipes get plain text).
fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    use std::io::IsTerminal;
    let bold = std::io::stdout().is_terminal();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s
    };
    let header = line(headers.to_vec());
    if bold {
        println!("\x1b[1m{header}\x1b[0m");
    } else {
        println!("{header}");
    }
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}
