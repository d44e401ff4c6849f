//! Every flag of the command line, in one place (clap derive). DESIGN.md fixes the names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "storageos-fuse",
    version,
    about = "Encrypted block volumes for Kubernetes nodes, exposed through FUSE",
    long_about = "Encrypted block volumes for Kubernetes nodes. Each volume is a sparse backing file; \
                  `mount` exposes its decrypted image as one regular file for losetup, and \
                  volumes labelled storageos.com/encryption=true are AES-256-XTS encrypted with keys \
                  kept as Kubernetes Secrets (or Secret manifests in a directory)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Where volumes live: <DIR>/volumes/<id>/{volume.json,data}
    #[arg(
        long,
        global = true,
        env = "STORAGEOS_FUSE_DATA_DIR",
        default_value = "/var/lib/storageos-fuse"
    )]
    pub data_dir: PathBuf,
    /// Directory of Secret manifests for key source `dir` [default: <data-dir>/keys]
    #[arg(long, global = true, env = "STORAGEOS_FUSE_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Where keys are kept: Secret manifests in a directory, or Kubernetes Secrets
    #[arg(long, global = true, env = "STORAGEOS_FUSE_KEY_SOURCE", value_enum, default_value_t = KeySource::Dir)]
    pub key_source: KeySource,
    /// Namespace of the key Secrets (the install namespace)
    #[arg(
        long,
        global = true,
        env = "POD_NAMESPACE",
        default_value = "storageos"
    )]
    pub key_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeySource {
    Dir,
    Kube,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, list, update and delete volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Expose a volume's plaintext image as a regular file (for losetup)
    Mount(MountArgs),
    /// Unmount an image mounted by `mount` (by volume or by path)
    Umount {
        /// NAMESPACE/NAME, NAME, volume id, or the image path
        target: String,
    },
    /// DaemonSet mode: every volume of the node under one FUSE mount (<ns>/<name>, by-id/<id>)
    Serve(ServeArgs),
    /// Back up, restore and check the key Secrets
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script (e.g. `storageos-fuse completions bash > /etc/bash_completion.d/storageos-fuse`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page in roff (e.g. `storageos-fuse manpage | man -l -`)
    Manpage,
    /// Measure single-thread AES-XTS throughput of 4 KiB sectors (like `cryptsetup benchmark`)
    Benchmark {
        /// Output format
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to mount the volume tree on (created if absent)
    #[arg(long, default_value = "/var/lib/storageos/volumes")]
    pub mountpoint: PathBuf,
    /// FUSE worker threads, shared by all volumes (as `mount`: 8 measured ahead of 4)
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Let users other than root open the images (off by default)
    #[arg(long)]
    pub allow_other: bool,
    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on IP:PORT, e.g. 0.0.0.0:9402 (off by default)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// How the daemon reads and writes the backing file: `buffered` (through the page cache;
    /// faster here, bench/RESULTS.md) or `direct` (O_DIRECT for aligned transfers: no second
    /// cached copy of the volume, as ciphertext, beside the file system's own cache)
    #[arg(long, value_enum, default_value_t = BackingIoArg::Buffered)]
    pub backing_io: BackingIoArg,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (encrypted with --label storageos.com/encryption=true)
    Create {
        /// NAMESPACE/NAME or NAME (namespace `default`)
        volume: String,
        /// Size as a Kubernetes quantity (5Gi, 512Mi, 1T) or bytes; rounded up to the sector size
        // Hyphen values reach the size parser, which says why `-1Gi` is not a size.
        #[arg(long, allow_hyphen_values = true)]
        size: Option<String>,
        /// KEY=VALUE; repeatable
        #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Encryption data unit and logical sector size
        #[arg(long, default_value_t = 4096, value_parser = parse_sector_size)]
        sector_size: u32,
    },
    /// Show one volume as JSON ("id" first)
    Inspect { volume: String },
    /// List volumes
    List {
        /// Output format
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Change labels (KEY=VALUE sets, KEY= removes; the encryption label is fixed)
    Update {
        volume: String,
        #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", required = true)]
        labels: Vec<String>,
    },
    /// Delete a volume: its data, its metadata, then its vol-key Secret
    Delete { volume: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// NAMESPACE/NAME, NAME or volume id
    pub volume: String,
    /// The image file to mount on (created if absent) [default: /run/storageos-fuse/<ns>/<name>]
    #[arg(long)]
    pub at: Option<PathBuf>,
    /// Return once the image is usable, leaving a server process running
    #[arg(long)]
    pub background: bool,
    /// FUSE worker threads (8 measured ahead of 4 for random 4 KiB I/O, bench/RESULTS.md)
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Let users other than root open the image (off by default)
    #[arg(long)]
    pub allow_other: bool,
    /// How the daemon reads and writes the backing file: `buffered` (through the page cache;
    /// faster here, bench/RESULTS.md) or `direct` (O_DIRECT for aligned transfers: no second
    /// cached copy of the volume, as ciphertext, beside the file system's own cache)
    #[arg(long, value_enum, default_value_t = BackingIoArg::Buffered)]
    pub backing_io: BackingIoArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackingIoArg {
    Buffered,
    Direct,
}

impl From<BackingIoArg> for crate::image::BackingIo {
    fn from(a: BackingIoArg) -> Self {
        match a {
            BackingIoArg::Direct => Self::Direct,
            BackingIoArg::Buffered => Self::Buffered,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Per volume: key available, missing or mismatch
    Status,
    /// Write one Secret manifest per ns-key/vol-key that `kubectl create -f` accepts
    Backup {
        /// Directory to write SECRET.yaml files into (created if absent)
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore key Secrets from backups or raw `kubectl get secret -o yaml` output
    Restore {
        /// Files holding one Secret, several documents or a `kind: List`
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!(
            "{s} is not a supported sector size: use 512 or 4096"
        )),
    }
}
