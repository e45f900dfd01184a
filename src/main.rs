//! The `switchyard` binary: parse the command line, load the config, start the node, wait
//! for a signal.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use switchyard::config::Config;
use switchyard::server::Node;
use switchyard::transport::ListenSpec;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "SIP switch and contact-centre core"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML); without it the embedded default is used.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// SIP listen socket, `udp:IP:PORT` or `tcp:IP:PORT` (repeatable; replaces the config's).
    #[arg(long = "sip-listen", global = true)]
    sip_listen: Vec<ListenSpec>,
    /// HTTP listen address for /metrics and /health.
    #[arg(long = "http-listen", global = true)]
    http_listen: Option<SocketAddr>,
    /// Data directory (database, generated files).
    #[arg(long = "data-dir", global = true)]
    data_dir: Option<PathBuf>,
    /// Join a cluster described by this file (see cluster.toml); without it the node runs
    /// alone with no external service.
    #[arg(long, global = true)]
    cluster: Option<PathBuf>,
    /// Without a config file the node runs a demo tenant (users 1001-1005, queue 5000, echo
    /// test 9196, music 9664); this turns it off.
    #[arg(long = "no-demo", global = true)]
    no_demo: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch (the default).
    Run,
    /// Validate a config file and print every fault with its place.
    CheckConfig { file: PathBuf },
    /// Print the version.
    Version,
    /// Print a user's digest HA1 hashes for the config (`ha1_md5`, `ha1_sha256`); the
    /// password is read from standard input, so it stays out of shell history.
    Ha1 {
        #[arg(long)]
        username: String,
        /// The tenant's realm (its domain unless configured otherwise).
        #[arg(long)]
        realm: String,
    },
    /// The operator's console over the node's API: a command (`status`, `calls`, `call ID`,
    /// `hangup ID`, `queues`, `agents`, `agent T/A ready|not-ready|logout`, `trunks`,
    /// `bans`, `unban IP`, `drain`, `undrain`, `log level LEVEL`), or a prompt without one.
    Ctl {
        /// The node's API (default: the config's `http.listen`, else http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
        /// The node's token (default: the config's `http.token`, else `DATA_DIR/api-token`).
        #[arg(long)]
        token: Option<String>,
        /// A PEM certificate to trust for an HTTPS API (its own, when self-issued).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// JSON as the API answers, for scripts, instead of tables.
        #[arg(long)]
        json: bool,
        /// The command and its arguments; without one, a prompt with history.
        command: Vec<String>,
    },
}

fn load(cli: &Cli) -> Result<Config, Vec<switchyard::config::ConfigError>> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !cli.sip_listen.is_empty() {
        config.sip.listen = cli.sip_listen.iter().map(ToString::to_string).collect();
    }
    if let Some(h) = cli.http_listen {
        config.http.listen = h;
    }
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if cli.config.is_none() && cli.cluster.is_none() && !cli.no_demo {
        match switchyard::demo::apply(&mut config) {
            Ok(demo) => print_demo(&demo),
            Err(e) => {
                return Err(vec![switchyard::config::ConfigError {
                    place: "demo".into(),
                    message: e.to_string(),
                }])
            }
        }
    }
    config.validate()?;
    Ok(config)
}

/// `switchyard ctl`: where the node's API is and its token come from the same flags and
/// config file the node was started with.
fn ctl(
    cli: &Cli,
    url: &Option<String>,
    token: &Option<String>,
    ca: &Option<PathBuf>,
    json: bool,
    command: &[String],
) -> ExitCode {
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    eprintln!("{}: {e}", path.display());
                }
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let data_dir = cli.data_dir.clone().unwrap_or(config.data_dir.clone());
    let url = url.clone().unwrap_or_else(|| {
        let mut addr = cli.http_listen.unwrap_or(config.http.listen);
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if config.http.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    });
    let token = match switchyard::ctl::client::find_token(
        token.as_deref(),
        config.http.token.as_deref(),
        &data_dir,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let options = switchyard::ctl::Options {
        target: switchyard::ctl::Target {
            url: url.trim_end_matches('/').to_string(),
            token,
            ca: ca.clone(),
        },
        json,
        history: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".switchyard_history")),
    };
    ExitCode::from(switchyard::ctl::run(options, command))
}

/// Tells the person who started the node what to try; passwords only when just generated.
fn print_demo(demo: &switchyard::demo::Demo) {
    println!(
        "Demo tenant (no config file; --no-demo turns it off): register as 1001-1005 at {}",
        demo.domain
    );
    if demo.generated {
        println!(
            "  passwords (printed this once, kept in {}):",
            demo.file.display()
        );
        for (user, password) in &demo.users {
            println!("    {user}  {password}");
        }
    } else {
        println!("  passwords in {}", demo.file.display());
    }
    println!(
        "  call 9196 (echo test), 9664 (music on hold), 5000 (queue support: agent 1002 available, 1001 logged out), or 1001-1005"
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Version) => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(Command::CheckConfig { file }) => {
            return match Config::load(file) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Ha1 { username, realm }) => {
            use switchyard::sip::auth::{ha1, Algorithm};
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                eprintln!("switchyard: could not read the password from standard input");
                return ExitCode::from(2);
            }
            let password = password.trim_end_matches(['\r', '\n']);
            println!("username = \"{username}\"");
            println!(
                "ha1_md5 = \"{}\"",
                ha1(Algorithm::Md5, username, realm, password)
            );
            println!(
                "ha1_sha256 = \"{}\"",
                ha1(Algorithm::Sha256, username, realm, password)
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Ctl {
            url,
            token,
            ca,
            json,
            command,
        }) => return ctl(&cli, url, token, ca, *json, command),
        Some(Command::Run) | None => {}
    }
    init_logs();
    let mut config = match load(&cli) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("config: {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &cli.cluster {
        match switchyard::cluster::ClusterConfig::load(path) {
            Ok(c) => config.cluster = Some(c),
            Err(e) => {
                eprintln!("cluster: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let node = match Node::start(config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(fp) = &node.tls_fingerprint {
            println!("TLS certificate fingerprint (SHA-256): {fp}");
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `switchyard=info`); the filter can be
/// changed while the node runs (`PUT /log`, `switchyard ctl log level`).
fn init_logs() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("switchyard=info"));
    let current = filter.to_string();
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    switchyard::api::log::install(
        current,
        Box::new(move |text| {
            let filter = EnvFilter::try_new(text).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        }),
    );
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
