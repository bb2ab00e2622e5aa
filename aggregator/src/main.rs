//! `hostpulse-aggregator`: loads and validates the config, starts tracing,
//! binds, and runs the library until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostpulse_aggregator::{AggregatorConfig, Listeners};
use tokio_util::sync::CancellationToken;

/// Receives host samples from hostpulse agents over gRPC and re-broadcasts
/// them as topic updates to WebSocket subscribers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, short, env = "HOSTPULSE_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC ingest address (overrides `ingest.listen`).
    #[arg(long, env = "HOSTPULSE_INGEST_LISTEN")]
    ingest_listen: Option<SocketAddr>,
    /// HTTP/WebSocket address (overrides `http.listen`).
    #[arg(long, env = "HOSTPULSE_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Data directory of the store of history on disk (overrides
    /// `storage.dir`, and turns the store on).
    #[arg(long, env = "HOSTPULSE_STORAGE_DIR")]
    storage_dir: Option<PathBuf>,
    /// Read a token from standard input, print its SHA-256 for a `sha256 =`
    /// entry in `[auth]`, and exit.
    #[arg(long)]
    hash_token: bool,
    /// Validate the configuration (reading every token and certificate file
    /// it names, and the alert rules), print the effective settings and the
    /// rules as TOML and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object per line, for log shippers).
    #[arg(long, env = "HOSTPULSE_LOG_FORMAT", default_value = "text")]
    log_format: hostpulse_common::logging::LogFormat,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.hash_token {
        let mut token = String::new();
        if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
            eprintln!("hostpulse-aggregator: give the token on standard input");
            return ExitCode::from(EXIT_CONFIG);
        }
        println!(
            "{}",
            hex::encode(hostpulse_aggregator::auth::hash(token.trim()))
        );
        return ExitCode::SUCCESS;
    }
    hostpulse_common::logging::init(args.log_format, "hostpulse_aggregator=info,tower_http=info");

    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostpulse-aggregator: configuration refused: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!(
            "# effective configuration\n{}",
            toml::to_string_pretty(&config.redacted()).expect("a config serialises")
        );
        if let Some(path) = &config.alerts.rules {
            // Validation has just loaded them; print them as understood.
            match hostpulse_aggregator::alert::rules::load(path) {
                Ok(rules) => {
                    println!("# alert rules from {} ({})", path.display(), rules.len());
                    for r in &rules {
                        println!("#   {}", r.describe());
                    }
                    let file = hostpulse_aggregator::alert::rules::RulesFile {
                        rule: rules.into_iter().map(|r| r.config).collect(),
                    };
                    println!(
                        "{}",
                        toml::to_string_pretty(&file).expect("rules serialise")
                    );
                }
                Err(e) => {
                    eprintln!("hostpulse-aggregator: configuration refused: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    // This runtime serves clients (WebSocket, HTTP); the live path starts
    // its own threads, at normal priority.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hostpulse-ws")
        .on_thread_start(hostpulse_aggregator::lower_priority)
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(async move {
        let listeners = match Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "hostpulse-aggregator: cannot listen on {} / {}: {e}",
                    config.ingest.listen, config.http.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(hostpulse_aggregator::shutdown_on_signal(shutdown.clone()));
        match hostpulse_aggregator::run(config, listeners, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostpulse-aggregator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn load_config(args: &Args) -> Result<AggregatorConfig, hostpulse_aggregator::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => AggregatorConfig::load(path)?,
        None => AggregatorConfig::default(),
    };
    if let Some(a) = args.ingest_listen {
        config.ingest.listen = a;
    }
    if let Some(a) = args.http_listen {
        config.http.listen = a;
    }
    if let Some(d) = &args.storage_dir {
        config.storage.dir = Some(d.clone());
    }
    let origin = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    config.validate(&origin)?;
    Ok(config)
}
