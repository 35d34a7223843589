//! `metalctl`'s command line (clap derive). Parsing only: [`super::commands`] runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use protocol::domain::NodeState;

/// Operator CLI for a Metalfleet coordinator cluster.
#[derive(Debug, Parser)]
#[command(
    name = "metalctl",
    version,
    about = "Operator CLI for the Metalfleet coordinators' REST API"
)]
pub struct Cli {
    /// Config file (TOML) [default: ~/.config/metalctl/config.toml].
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "METALCTL_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    /// Coordinator API URL; repeat for failover order (replaces the config's list).
    #[arg(long = "coordinator", global = true, value_name = "URL")]
    pub coordinators: Vec<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "METALFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Cluster CA certificate (a coordinator's data_dir/tls/ca.crt).
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Read from the answering coordinator without a linearizable read (may lag).
    #[arg(long, global = true)]
    pub stale: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Sites (datacenters).
    #[command(subcommand)]
    Site(SiteCmd),
    /// Racks.
    #[command(subcommand)]
    Rack(RackCmd),
    /// Expected inventory.
    #[command(subcommand)]
    Inventory(InventoryCmd),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Projects (tenants).
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit trail, newest first.
    Audit(AuditArgs),
    /// Networks (tenancy).
    #[command(subcommand)]
    Network(super::tenancy::NetworkCmd),
    /// Port and power jobs.
    #[command(subcommand)]
    Job(super::tenancy::JobCmd),
    /// Elastic leases: nodes lent to another project for a time window.
    #[command(subcommand)]
    Lease(super::tenancy::LeaseCmd),
    /// Workflow templates.
    #[command(subcommand)]
    Workflow(super::runs::WorkflowCmd),
    /// Workflow runs.
    #[command(subcommand)]
    Run(super::runs::RunCmd),
    /// Rollouts: a workflow over many nodes with concurrency limits and a failure budget.
    #[command(subcommand)]
    Rollout(super::runs::RolloutCmd),
}

/// `metalctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Show the answering coordinator's view of the cluster.
    Status,
    /// Add a coordinator as a non-voting learner (after `coordinator join` and `run`).
    AddLearner {
        /// Its Raft member id.
        id: u64,
        /// Its Raft address, host:port.
        raft_addr: String,
        /// Its API URL, https://host:port.
        api_url: String,
        /// Its fleet (rack agent) endpoint, host:port, handed to agents when they enroll.
        #[arg(long, value_name = "HOST:PORT")]
        fleet_addr: Option<String>,
    },
    /// Make a learner a voter.
    Promote {
        /// Raft member id.
        id: u64,
    },
    /// Remove a member (voter or learner).
    Remove {
        /// Raft member id.
        id: u64,
    },
}

/// `metalctl site ...`
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// List sites.
    List,
    /// Create or replace a site.
    Create {
        /// Site name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a site (refused while racks stand in it).
    Delete {
        /// Site name.
        name: String,
    },
}

/// `metalctl rack ...`
#[derive(Debug, Subcommand)]
pub enum RackCmd {
    /// List racks with their agents' enrollment and link state.
    List,
    /// Create or replace a rack.
    Create {
        /// Rack name (unique across the fleet).
        name: String,
        /// The site it stands in.
        #[arg(long)]
        site: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a rack (refused while inventory or nodes reference it).
    Delete {
        /// Rack name.
        name: String,
    },
    /// Create a single-use token for `rack-agent enroll`; printed once, alone on the last line.
    EnrollToken {
        /// Rack name.
        name: String,
        /// Lifetime in seconds (default: the coordinator's, one hour).
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    /// Revoke the rack's agent: its certificate stops working; it must enroll again.
    Revoke {
        /// Rack name.
        name: String,
    },
}

/// `metalctl inventory ...`
#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// List expected-inventory records.
    List {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only this rack.
        #[arg(long)]
        rack: Option<String>,
        /// Only records with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show one record.
    Get {
        /// Chassis serial.
        serial: String,
    },
    /// Upsert records from a file: `.csv` is sent as CSV, anything else as a JSON array.
    Import {
        /// The file.
        file: PathBuf,
        /// Report what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a record.
    Delete {
        /// Chassis serial.
        serial: String,
    },
}

/// `metalctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    List {
        /// Only this rack.
        #[arg(long)]
        rack: Option<String>,
        /// Only this lifecycle state.
        #[arg(long)]
        state: Option<NodeState>,
        /// Only this serial.
        #[arg(long)]
        serial: Option<String>,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only nodes with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only the discovered pool: nodes whose serial matches no expected-inventory record.
        #[arg(long, conflicts_with = "identified")]
        discovered: bool,
        /// Only nodes matched to an expected-inventory record.
        #[arg(long)]
        identified: bool,
    },
    /// Show one node.
    Get {
        /// Node id or serial.
        id: String,
    },
    /// Register a node by hand (agents normally do this on first network boot).
    Create {
        /// Chassis serial.
        serial: String,
        /// Rack it stands in.
        #[arg(long)]
        rack: Option<String>,
        /// A MAC address of the node (repeatable).
        #[arg(long = "mac", value_name = "MAC")]
        macs: Vec<String>,
    },
    /// Change a node's desired state.
    Set(NodeSetArgs),
    /// Tenancy: allocate, free, attach, detach, revert, power, move, ports.
    #[command(flatten)]
    Tenancy(super::tenancy::NodeTenancyCmd),
    /// A node's timeline: check-ins, boots, power, runs and steps, logs, jobs.
    Events(super::runs::NodeEventsArgs),
}

/// `metalctl node set ...`
#[derive(Debug, Args)]
pub struct NodeSetArgs {
    /// Node id or serial.
    pub id: String,
    /// New lifecycle state.
    #[arg(long)]
    pub state: Option<NodeState>,
    /// What it network-boots next.
    #[arg(long, value_enum)]
    pub boot: Option<BootArg>,
    /// Allocate it to this project.
    #[arg(long, conflicts_with = "no_project")]
    pub project: Option<String>,
    /// Free it from its project.
    #[arg(long)]
    pub no_project: bool,
    /// Replace its tags with these (repeatable).
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "no_tags")]
    pub tags: Vec<String>,
    /// Remove all its tags.
    #[arg(long)]
    pub no_tags: bool,
}

/// Boot targets settable from the command line (installers need an API call with a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    /// Boot the local disk.
    Local,
    /// Boot the discovery microkernel.
    Discovery,
    /// Do not answer its network boot.
    #[value(name = "none")]
    NoBoot,
}

impl BootArg {
    /// The `kind` of the API's boot target.
    pub fn kind(self) -> &'static str {
        match self {
            BootArg::Local => "local",
            BootArg::Discovery => "discovery",
            BootArg::NoBoot => "none",
        }
    }
}

/// `metalctl project ...`
#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// List projects.
    List,
    /// Create or replace a project.
    Create {
        /// Project name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a project.
    Delete {
        /// Project name.
        name: String,
    },
}

/// `metalctl user ...`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// List users.
    List,
    /// Create or replace a user.
    Create {
        /// User name.
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Project (for, and only for, project_member).
        #[arg(long)]
        project: Option<String>,
    },
    /// Delete a user.
    Delete {
        /// User name.
        name: String,
    },
}

/// A user's role, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// The fleet, not users or membership.
    Operator,
    /// The nodes of one project.
    ProjectMember,
    /// Reads only.
    ReadOnly,
}

impl RoleArg {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::Operator => "operator",
            RoleArg::ProjectMember => "project_member",
            RoleArg::ReadOnly => "read_only",
        }
    }
}

/// `metalctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List tokens (admins see all, others their own).
    List,
    /// Create a token; its secret is printed once.
    Create {
        /// Owner (default: you; only admins may create tokens for others).
        #[arg(long)]
        user: Option<String>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    /// Revoke a token.
    Delete {
        /// Token id.
        id: String,
    },
}

/// `metalctl audit ...`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// At most this many entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only entries by this actor (e.g. `user:admin`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries before this revision (for paging).
    #[arg(long, value_name = "REVISION")]
    pub before: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_after_subcommands() {
        let c = Cli::try_parse_from([
            "metalctl",
            "node",
            "set",
            "SN1",
            "--boot",
            "none",
            "--no-project",
            "-o",
            "json",
            "--stale",
        ])
        .unwrap();
        assert_eq!(c.output, Output::Json);
        assert!(c.stale);
        let Command::Node(NodeCmd::Set(s)) = c.command else {
            panic!("parsed as {:?}", c.command)
        };
        assert_eq!(s.boot, Some(BootArg::NoBoot));
        assert!(s.no_project);
        assert!(Cli::try_parse_from([
            "metalctl",
            "node",
            "set",
            "SN1",
            "--project",
            "p",
            "--no-project"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["metalctl", "user", "create", "u", "--role", "read_only"]).is_ok()
        );
    }

    #[test]
    fn rack_agent_and_learner_commands() {
        let c = Cli::try_parse_from([
            "metalctl",
            "rack",
            "enroll-token",
            "r1",
            "--expires-in",
            "60",
        ])
        .unwrap();
        let Command::Rack(RackCmd::EnrollToken { name, expires_in }) = c.command else {
            panic!("parsed as {:?}", c.command)
        };
        assert_eq!((name.as_str(), expires_in), ("r1", Some(60)));
        assert!(Cli::try_parse_from(["metalctl", "rack", "revoke", "r1"]).is_ok());
        let c = Cli::try_parse_from([
            "metalctl",
            "cluster",
            "add-learner",
            "2",
            "127.0.0.1:17452",
            "https://127.0.0.1:17442",
            "--fleet-addr",
            "127.0.0.1:17462",
        ])
        .unwrap();
        let Command::Cluster(ClusterCmd::AddLearner { fleet_addr, .. }) = c.command else {
            panic!("parsed as {:?}", c.command)
        };
        assert_eq!(fleet_addr.as_deref(), Some("127.0.0.1:17462"));
    }
}
