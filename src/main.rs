//! The `flat6` binary: one executable, three roles, and `check` for configs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flat6::config::{self, Config, LoadError, Role};
use flat6::controller::cli::{
    self, AddressCommand, ClientArgs, InstanceCommand, PodCommand, SgCommand,
};
use flat6::guard::daemon::GuardMode;
use flat6::telemetry::{self, LogFormat};

/// mimalloc instead of the system allocator: the guard decodes and replaces documents of
/// hundreds of thousands of small strings, where glibc's malloc spent more time consolidating
/// and unlinking free chunks than serde spent parsing (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// IPv6 for flat, security-group isolated cloud networks.
#[derive(Debug, Parser)]
#[command(name = "flat6", version, about, long_about = None)]
struct Cli {
    /// Log line format (the level comes from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: allocates addresses and security groups in SQL and serves the agents' watches.
    Controller {
        /// The controller's TOML config (role = "controller").
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the virtual router on one pod link: Router Advertisements (M+O) and DHCPv6 from reservations.
    Vr {
        /// The VR's TOML config (role = "vr").
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the hypervisor guard: programs per-instance security groups into nftables.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Guard {
        /// The guard's TOML config (role = "guard").
        #[arg(long, required = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<GuardAction>,
    },
    /// Pods on the controller: create, show, delete.
    Pod {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Instances on the controller: create (allocates addresses), show, delete.
    Instance {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: InstanceCommand,
    },
    /// Extra addresses of an instance: add, remove.
    Address {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AddressCommand,
    },
    /// Security groups on the controller: set, show, delete.
    Sg {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SgCommand,
    },
    /// Validate a config file of any role and print every problem with its field path.
    Check {
        /// The TOML config to validate; its `role` key says which role it is for.
        #[arg(long)]
        config: PathBuf,
    },
}

/// One-shot guard commands (without one, `flat6 guard --config FILE` runs the daemon).
#[derive(Debug, Subcommand)]
enum GuardAction {
    /// Apply the current document once and exit.
    Apply {
        /// The guard's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the nftables ruleset that would be applied; changes nothing.
    Render {
        /// The guard's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove the guard's tables (and nothing else).
    Teardown {
        /// The guard's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
}

/// How a command failed, which decides the exit code.
enum Failure {
    /// Bad usage or bad config: exit 2.
    Usage(anyhow::Error),
    /// Something went wrong while running: exit 1.
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            eprintln!("flat6: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("flat6: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check { config } => check(&config),
        Command::Vr { config } => {
            let Config::Vr(vr) = load(&config, Role::Vr)? else {
                return Err(Failure::Usage(anyhow::anyhow!("not a vr config")));
            };
            flat6::vr::run(*vr).map_err(|e| Failure::Runtime(e.into()))
        }
        Command::Controller { config } => {
            let Config::Controller(controller) = load(&config, Role::Controller)? else {
                return Err(Failure::Usage(anyhow::anyhow!("not a controller config")));
            };
            flat6::controller::run(controller).map_err(|e| Failure::Runtime(e.into()))
        }
        Command::Pod { client, command } => cli_result(cli::pod(&client, command)),
        Command::Instance { client, command } => cli_result(cli::instance(&client, command)),
        Command::Address { client, command } => cli_result(cli::address(&client, command)),
        Command::Sg { client, command } => cli_result(cli::sg(&client, command)),
        Command::Guard { config, action } => {
            let (path, mode) = match (action, config) {
                (Some(GuardAction::Apply { config }), _) => (config, GuardMode::Apply),
                (Some(GuardAction::Render { config }), _) => (config, GuardMode::Render),
                (Some(GuardAction::Teardown { config }), _) => (config, GuardMode::Teardown),
                (None, Some(config)) => (config, GuardMode::Daemon),
                (None, None) => {
                    return Err(Failure::Usage(anyhow::anyhow!(
                        "flat6 guard needs --config FILE (or apply|render|teardown --config FILE)"
                    )));
                }
            };
            let Config::Guard(guard) = load(&path, Role::Guard)? else {
                return Err(Failure::Usage(anyhow::anyhow!("not a guard config")));
            };
            flat6::guard::daemon::run(guard, mode).map_err(|e| Failure::Runtime(e.into()))
        }
    }
}

fn cli_result(result: Result<(), cli::CliError>) -> Result<(), Failure> {
    result.map_err(|e| match e {
        cli::CliError::Usage(m) => Failure::Usage(anyhow::anyhow!(m)),
        cli::CliError::Failed(m) => Failure::Runtime(anyhow::anyhow!(m)),
    })
}

fn load(path: &Path, role: Role) -> Result<Config, Failure> {
    // A config that cannot be read is as much a usage error as one that does not validate.
    config::load_role(path, role).map_err(|err| Failure::Usage(err.into()))
}

fn check(path: &Path) -> Result<(), Failure> {
    match config::load_file(path) {
        Ok(config) => {
            println!("{}: valid {} config", path.display(), config.role().name());
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        Err(LoadError::Invalid { problems, .. }) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for problem in problems.iter() {
                eprintln!("{problem}");
            }
            Err(Failure::Usage(anyhow::anyhow!(
                "{} is not a valid config",
                path.display()
            )))
        }
        Err(err) => Err(Failure::Usage(err.into())),
    }
}
