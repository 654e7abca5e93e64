//! `dualwrite plan` and `dualwrite apply`, the I/O shell around the pure planner of
//! `dualwrite_rules::migration_plan`. `plan` reads the table from the catalog ([`catalog`]), plans the
//! target shape, checks on real rows that the mappings round-trip ([`round_trip`], in a rolled-back
//! transaction) and writes the plan directory: `shadow.sql` (the shadow's DDL) and `rules.toml` (the
//! migration, in the rules-file format). `apply` ([`apply`]) runs a plan directory against the database.
//!
//! Exit codes of `plan`: 0 = written; 1 = refused (the target cannot be planned, or the round trip fails);
//! 2 = it could not run (unreadable file, database unreachable, table missing).

pub mod apply;
pub mod catalog;
pub mod round_trip;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use dualwrite_rules::migration_plan::{self, Operations, PlanOptions, Target};
use dualwrite_rules::{TableName, Versions};

use crate::pg_client::PgTarget;
use round_trip::RoundTrip;

/// The plan directory's DDL script.
pub const DDL_FILE: &str = "shadow.sql";
/// The plan directory's rules file.
pub const RULES_FILE: &str = "rules.toml";

/// The command line of `dualwrite plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The table to migrate, e.g. `public.users` (without a schema: in `public`, as in a rules file).
    #[arg(long)]
    pub table: String,
    /// The target shape as SQL: one CREATE TABLE of the new shape (columns matched by name), then any
    /// CREATE INDEX on it.
    #[arg(long, conflicts_with = "operations", required_unless_present = "operations")]
    pub create_table: Option<PathBuf>,
    /// The target shape as operations (TOML: rename, split, merge, change_type, add_column, primary_key).
    #[arg(long)]
    pub operations: Option<PathBuf>,
    /// The database holding the table (postgres:// URL or key=value string).
    #[arg(long, env = "DUALWRITE_UPSTREAM")]
    pub upstream: String,
    /// The shadow table [default: `<table>_<new version>` in the table's schema].
    #[arg(long)]
    pub shadow: Option<String>,
    /// The migration's name [default: the shadow's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The old shape's version name.
    #[arg(long, default_value = "v1")]
    pub old_version: String,
    /// The new shape's version name.
    #[arg(long, default_value = "v2")]
    pub new_version: String,
    /// Rows sampled for the round-trip check.
    #[arg(long, default_value_t = 1000)]
    pub sample: i64,
    /// The plan directory to write (created if missing): shadow.sql and rules.toml.
    #[arg(long)]
    pub out: PathBuf,
}

/// What `plan` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanOutcome {
    /// The plan was written; `rows_checked` is `None` when the table had no rows to sample.
    Written { rows_checked: Option<i64> },
    /// The plan was refused (nothing written), with why.
    Refused { column: Option<String>, reason: String },
}

/// Runs `dualwrite plan` with the report on stdout; returns the process exit code.
pub async fn plan_main(args: PlanArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match run_plan(&args, &mut stdout).await {
        Ok(PlanOutcome::Written { .. }) => ExitCode::SUCCESS,
        Ok(PlanOutcome::Refused { .. }) => ExitCode::from(1),
        Err(error) => {
            let _ = stdout.flush();
            eprintln!("dualwrite plan: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Plans, checks and writes; the report goes to `out`. An `Err` means the plan could not be attempted.
pub async fn run_plan(args: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<PlanOutcome> {
    // An unqualified name means `public`, as in a rules file: the catalog read, the DDL and the rules all
    // name the same tables whatever the connection's search_path finds first.
    let table = TableName::parse(&args.table).map_err(|e| anyhow::anyhow!("--table: {e}"))?.qualified();
    let shadow = match &args.shadow {
        Some(text) => TableName::parse(text).map_err(|e| anyhow::anyhow!("--shadow: {e}"))?.qualified(),
        None => TableName { schema: table.schema.clone(), name: format!("{}_{}", table.name, args.new_version) },
    };
    let target = read_target(args)?;
    let options = PlanOptions {
        name: args.name.clone().unwrap_or_else(|| shadow.name.clone()),
        shadow: shadow.clone(),
        versions: Versions { old: args.old_version.clone(), new: args.new_version.clone() },
    };
    let pg = PgTarget::from_str(&args.upstream).context("parsing --upstream")?;
    let mut client = pg.connect_client().await.context("connecting to --upstream")?;
    let current = catalog::read_table(&client, &table).await?;
    let exists: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&shadow.to_string()]).await?.get(0);
    if exists.is_some() {
        return refuse(out, None, format!("{shadow} already exists: choose another --shadow, or drop it"));
    }
    let plan = match migration_plan::plan(&current, &target, &options) {
        Ok(plan) => plan,
        Err(error) => return refuse(out, error.column, error.message),
    };
    let rows_checked = match round_trip::check(&mut client, &plan, args.sample).await? {
        RoundTrip::Clean { rows } => Some(rows),
        RoundTrip::NoRows => None,
        RoundTrip::Refused { column, reason } => return refuse(out, column, reason),
    };

    let mut header = vec![format!(
        "dualwrite plan: {} -> {} (migration {}, versions {} -> {})",
        table, shadow, plan.migration.name, args.old_version, args.new_version
    )];
    header.push(match rows_checked {
        Some(rows) => format!("round trip (forward then backward) checked on {rows} sampled row(s)"),
        None => format!("round trip not checked: {table} had no rows"),
    });
    header.extend(plan.notes.iter().map(|n| format!("note: {n}")));
    header.push(format!(
        "apply with: dualwrite apply --plan {} --upstream ... --rules <the proxy's rules file>",
        args.out.display()
    ));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    write_file(&args.out.join(DDL_FILE), &migration_plan::ddl_script(&plan, &header))?;
    write_file(&args.out.join(RULES_FILE), &migration_plan::rules_toml(&plan.migration, &header))?;
    for line in &header {
        writeln!(out, "{line}")?;
    }
    for step in &plan.ddl {
        writeln!(out, "  {}", step.describe())?;
    }
    writeln!(out, "written: {} and {}", args.out.join(DDL_FILE).display(), args.out.join(RULES_FILE).display())?;
    Ok(PlanOutcome::Written { rows_checked })
}

fn read_target(args: &PlanArgs) -> anyhow::Result<Target> {
    let read = |path: &Path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    match (&args.create_table, &args.operations) {
        (Some(path), None) => Ok(Target::CreateTable(read(path)?)),
        (None, Some(path)) => {
            let text = read(path)?;
            Operations::from_toml(&text, &path.display().to_string()).map(Target::Operations).map_err(Into::into)
        }
        _ => anyhow::bail!("give exactly one of --create-table and --operations"),
    }
}

fn refuse(out: &mut dyn Write, column: Option<String>, reason: String) -> anyhow::Result<PlanOutcome> {
    match &column {
        Some(column) => writeln!(out, "REFUSED column {column}: {reason}")?,
        None => writeln!(out, "REFUSED: {reason}")?,
    }
    Ok(PlanOutcome::Refused { column, reason })
}

/// Writes `text` to `path` through a temporary file in the same directory, so a reader never sees half.
pub(crate) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
