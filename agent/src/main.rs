//! `hostpulse-agent`: loads the config, starts tracing, runs the agent until
//! SIGTERM or Ctrl-C. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hostpulse_agent::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

/// Samples this host (CPU, memory, load, processes) and streams the samples to
/// a hostpulse aggregator over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, short, env = "HOSTPULSE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Aggregator address (overrides `aggregator` in the file).
    #[arg(long, env = "HOSTPULSE_AGGREGATOR")]
    aggregator: Option<String>,
    /// Host name to report (overrides `hostname` in the file).
    #[arg(long, env = "HOSTPULSE_HOSTNAME")]
    hostname: Option<String>,
    /// Agent id to announce (overrides `agent_id` in the file); each agent
    /// needs its own, so clones of one machine image need it set.
    #[arg(long, env = "HOSTPULSE_AGENT_ID")]
    agent_id: Option<String>,
    /// File holding the token to present (overrides the token keys in the file).
    #[arg(long, env = "HOSTPULSE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print one sample as pretty JSON and exit.
    #[arg(long)]
    once: bool,
    /// Validate the configuration, print the effective settings as TOML and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object per line, for log shippers).
    #[arg(long, env = "HOSTPULSE_LOG_FORMAT", default_value = "text")]
    log_format: hostpulse_common::logging::LogFormat,
}

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    hostpulse_common::logging::init(args.log_format, "hostpulse_agent=info");
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostpulse-agent: configuration refused: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!(
            "# effective configuration\n{}",
            toml::to_string_pretty(&config.redacted()).expect("a config serialises")
        );
        return ExitCode::SUCCESS;
    }
    if args.once {
        return match hostpulse_agent::sample_once(&config) {
            Ok(sample) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sample).expect("a sample serialises")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hostpulse-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread is plenty for one stream; sysinfo refreshes run on the
    // blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(hostpulse_common::signal::shutdown_on_signal(
            shutdown.clone(),
        ));
        match Agent::new(config).run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostpulse-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn load_config(args: &Args) -> Result<AgentConfig, hostpulse_agent::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    let origin = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    if let Some(a) = &args.aggregator {
        config.aggregator = hostpulse_agent::config::Aggregators::Many(
            a.split(',').map(|s| s.trim().to_string()).collect(),
        );
    }
    if let Some(h) = &args.hostname {
        config.hostname = h.clone();
    }
    if let Some(id) = &args.agent_id {
        config.agent_id = id.clone();
    }
    if let Some(f) = &args.token_file {
        config.token = None;
        config.token_env = None;
        config.token_file = Some(f.clone());
    }
    config.validate(&origin)?;
    Ok(config)
}
