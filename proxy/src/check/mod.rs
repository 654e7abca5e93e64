//! `dualwrite check --rules FILE --upstream URL [--replay FILE]`: what the proxy would do, before it sits in
//! front of production. Validates the rules against the live schema ([`schema`]: tables, columns, keys,
//! types, every mapping expression prepared, forward-then-backward round trips on a sample of rows), lists
//! the writers of each old table that the proxy cannot see ([`writers`]: cascading foreign keys, triggers,
//! functions, procedures, writable views, rules; an error unless the rules accept it), and replays a file of statements through the rewriter ([`replay`]), printing for each whether it would pass
//! through, be rewritten (with the SQL) or be rejected (with why), then a summary.
//!
//! Exit codes: 0 = rules valid and nothing rejected; 1 = a rule problem (an unaccepted unseen writer too) or
//! a rejected statement (also a lossy round trip with `--strict`); 2 = the check could not run (unreadable
//! file, database unreachable).

pub(crate) mod definition;
pub(crate) mod key_defaults;
pub(crate) mod key_equality;
mod present;
mod replay;
pub(crate) mod row_security;
pub(crate) mod row_triggers;
pub(crate) mod schema;
pub mod writers;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use dualwrite_rules::{Phase, RuleSet};

pub use replay::{parse_statements, ReplayCounts};

/// The command line of `dualwrite check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The rules file (TOML).
    #[arg(long, env = "DUALWRITE_RULES")]
    pub rules: PathBuf,
    /// The upstream database (postgres:// URL or key=value string) whose schema the rules must fit; migrations
    /// naming another `database` are checked there (same server and credentials). Replayed statements are
    /// judged as sessions on this URL's database.
    #[arg(long, env = "DUALWRITE_UPSTREAM")]
    pub upstream: String,
    /// Statements to replay through the rewriter: one per line (`--` lines and blank lines skipped), or a
    /// CSV export of pg_stat_statements (any CSV with a header naming a `query` column).
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Replay as sessions of this version (default: each migration's old version).
    #[arg(long = "as-version")]
    pub as_version: Option<String>,
    /// Replay as if every migration were in this phase (default: each migration's initial phase).
    #[arg(long, value_parser = Phase::from_str)]
    pub phase: Option<Phase>,
    /// Rows per migration sampled for the forward-then-backward round trip.
    #[arg(long, default_value_t = 100)]
    pub sample: i64,
    /// Treat warnings (unmapped columns, a lossy round trip) as problems.
    #[arg(long)]
    pub strict: bool,
}

impl CheckArgs {
    pub fn new(rules: impl Into<PathBuf>, upstream: impl Into<String>) -> CheckArgs {
        CheckArgs {
            rules: rules.into(),
            upstream: upstream.into(),
            replay: None,
            as_version: None,
            phase: None,
            sample: 100,
            strict: false,
        }
    }
}

/// What `check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Rule problems (the rules cannot work against this schema).
    pub errors: usize,
    /// Things that work but deserve a look (lossy round trips, unmapped nullable columns).
    pub warnings: usize,
    /// Replay outcomes (all zero without `--replay`).
    pub replay: ReplayCounts,
    /// Whether warnings count as problems.
    pub strict: bool,
}

impl Findings {
    /// True when the rules fit the schema and no replayed statement would be rejected.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.replay.rejected == 0 && !(self.strict && self.warnings > 0)
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Runs `dualwrite check` with the report on stdout; returns the process exit code.
pub async fn main(args: CheckArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match run(&args, &mut stdout).await {
        Ok(findings) => findings.exit_code(),
        Err(error) => {
            let _ = stdout.flush();
            eprintln!("dualwrite check: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every check, writing the report to `out`. An `Err` means the check could not run at all.
pub async fn run(args: &CheckArgs, out: &mut dyn Write) -> anyhow::Result<Findings> {
    let mut findings = Findings { strict: args.strict, ..Findings::default() };
    let origin = args.rules.display().to_string();
    let text = std::fs::read_to_string(&args.rules).with_context(|| format!("reading {origin}"))?;
    // Read the replay file up front so a bad path fails before any database work.
    let statements = match &args.replay {
        Some(path) => Some((path, replay::read_statements(path)?)),
        None => None,
    };
    let rules = match RuleSet::from_toml(&text, &origin) {
        Ok(rules) => Arc::new(rules),
        Err(error) => {
            writeln!(out, "rules: INVALID: {error}")?;
            findings.errors += 1;
            writeln!(out, "summary: rules invalid ({} error)", findings.errors)?;
            return Ok(findings);
        }
    };
    writeln!(out, "rules: {origin} ({} migration(s))", rules.migrations.len())?;

    let upstream = crate::pg_client::PgTarget::from_str(&args.upstream).context("parsing --upstream")?;
    let parts = match crate::databases::split(&rules, upstream.database(), &origin) {
        Ok(parts) => parts,
        Err(error) => {
            writeln!(out, "rules: INVALID: {error:#}")?;
            findings.errors += 1;
            writeln!(out, "summary: rules invalid ({} error)", findings.errors)?;
            return Ok(findings);
        }
    };
    for part in &parts {
        let target = upstream.with_database(&part.database);
        let client = target.connect_client().await.with_context(|| {
            format!("connecting to --upstream, database \"{}\" (of migrations in the rules)", part.database)
        })?;
        for migration in &part.rules.migrations {
            let tally = schema::check_migration(&client, migration, args.sample, out).await?;
            let unseen = writers::check_migration(&client, migration, out).await?;
            findings.errors += tally.errors + unseen.errors;
            findings.warnings += tally.warnings + unseen.warnings;
        }
    }

    if let Some((path, statements)) = statements {
        // The statements are those of sessions on the --upstream URL's database: only its migrations apply.
        let database = upstream.database().unwrap_or_default();
        match parts.iter().find(|p| p.database == database) {
            Some(part) => {
                let route = replay::route_for(&part.rules, args.as_version.as_deref(), args.phase)?;
                writeln!(out, "replay: {} ({} statement(s))", path.display(), statements.len())?;
                findings.replay = replay::replay(&part.rules, &route, &statements, out)?;
            }
            None => {
                writeln!(
                    out,
                    "replay: {}: database \"{database}\" holds no migrations: all pass through",
                    path.display()
                )?;
                findings.replay.passed_through = statements.len();
            }
        }
    }

    let verdict = if findings.errors == 0 { "rules valid" } else { "rules INVALID" };
    write!(out, "summary: {verdict} ({} error(s), {} warning(s))", findings.errors, findings.warnings)?;
    if args.replay.is_some() {
        let r = &findings.replay;
        write!(
            out,
            "; replay: {} passed through, {} rewritten, {} rejected",
            r.passed_through, r.rewritten, r.rejected
        )?;
    }
    writeln!(out)?;
    Ok(findings)
}
