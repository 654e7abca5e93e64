//! `dualwrite apply --plan DIR`: runs a plan directory against the database, with a progress bar. Refuses
//! early (before any DDL) what registration would refuse: writers of the old table the proxy cannot see
//! that the plan does not accept. Then each DDL step, skipped when the catalog shows it done: the table
//! (when it exists, its columns must be the planned ones), each index built `CONCURRENTLY` outside any
//! transaction (an invalid index left by an interrupted build is dropped and built again), each constraint
//! added `NOT VALID` then validated. Then the migration is registered in the state, as the proxy registers
//! the migrations of its rules (audited `register`, in its initial phase), and added to the proxy's rules
//! file for the proxies to load at their next reload. Every part is idempotent, so re-running after an
//! interruption continues where it stopped and re-running after success changes nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use dualwrite_rules::migration_plan::{parse_script, DdlStep};
use dualwrite_rules::{quote_ident, Migration, RuleSet};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use super::{write_file, DDL_FILE, RULES_FILE};
use crate::pg_client::PgTarget;
use crate::state::{schema, schema_watch, store, Actor};

/// The command line of `dualwrite apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// A plan directory written by `dualwrite plan` (shadow.sql, rules.toml).
    #[arg(long)]
    pub plan: PathBuf,
    /// The database holding the table (postgres:// URL or key=value string).
    #[arg(long, env = "DUALWRITE_UPSTREAM")]
    pub upstream: String,
    /// The proxy's rules file: the migration is added to it (the file is created if missing).
    #[arg(long, env = "DUALWRITE_RULES")]
    pub rules: PathBuf,
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// DDL steps run now.
    pub steps_run: usize,
    /// DDL steps the catalog showed done already.
    pub steps_skipped: usize,
    /// The migration was registered now (false: it already was).
    pub registered: bool,
    /// The migration was added to the rules file now (false: the file already held it).
    pub rules_added: bool,
}

impl Applied {
    /// Nothing was left to do.
    pub fn was_noop(&self) -> bool {
        self.steps_run == 0 && !self.registered && !self.rules_added
    }
}

/// Runs `dualwrite apply` with the report on stdout; 0 = applied (or already), 2 = failed.
pub async fn apply_main(args: ApplyArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match run_apply(&args, &mut stdout).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = stdout.flush();
            eprintln!("dualwrite apply: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Applies the plan directory; the report goes to `out`.
pub async fn run_apply(args: &ApplyArgs, out: &mut dyn Write) -> anyhow::Result<Applied> {
    let rules_path = args.plan.join(RULES_FILE);
    let origin = rules_path.display().to_string();
    let text = std::fs::read_to_string(&rules_path).with_context(|| format!("reading {origin}"))?;
    let planned = RuleSet::from_toml(&text, &origin)?;
    let [migration] = planned.migrations.as_slice() else {
        anyhow::bail!("{origin}: a plan holds exactly one migration");
    };
    if migration.is_split() {
        anyhow::bail!(
            "{origin}: migration `{}` splits its table ([[migration.targets]]); `dualwrite apply` runs plans of one \
             shadow table: create the targets yourself and add the migration to the rules (README: Splitting a table)",
            migration.name
        );
    }
    let script_path = args.plan.join(DDL_FILE);
    let script = std::fs::read_to_string(&script_path).with_context(|| format!("reading {}", script_path.display()))?;
    let steps = parse_script(&script).map_err(|e| anyhow::anyhow!("{}: {e}", script_path.display()))?;
    // The rules file is checked before anything changes: a clash would otherwise surface after the DDL.
    merged_rules(&args.rules, migration)?;

    let pg =
        crate::databases::target_for(&PgTarget::from_str(&args.upstream).context("parsing --upstream")?, migration);
    let mut client = pg.connect_client().await.context("connecting to --upstream")?;
    schema::ensure_schema(&mut client).await?;
    schema_watch::refuse_unsafe_rules(&client, &planned).await?;

    writeln!(out, "apply: migration {} ({} -> {})", migration.name, migration.table, migration.shadow)?;
    let bar = ProgressBar::new(steps.len() as u64 + 2);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut applied = Applied::default();
    for step in &steps {
        bar.set_message(step.describe());
        let ran =
            run_step(&client, migration, step).await.with_context(|| format!("{}: {}", step.describe(), step.sql()))?;
        let status = if ran { "done" } else { "exists" };
        bar.suspend(|| writeln!(out, "  {status:<8} {}", step.describe()))?;
        if ran {
            applied.steps_run += 1;
        } else {
            applied.steps_skipped += 1;
        }
        bar.inc(1);
    }

    bar.set_message("register");
    applied.registered = register(&mut client, &planned, migration, &pg).await?;
    let status = if applied.registered { "done" } else { "exists" };
    bar.suspend(|| writeln!(out, "  {status:<8} register migration {}", migration.name))?;
    bar.inc(1);

    bar.set_message("rules file");
    applied.rules_added = add_to_rules_file(&args.rules, migration, &text)?;
    let status = if applied.rules_added { "done" } else { "exists" };
    bar.suspend(|| writeln!(out, "  {status:<8} {} in {}", migration.name, args.rules.display()))?;
    bar.inc(1);
    bar.finish_and_clear();
    writeln!(
        out,
        "applied: {} step(s) run, {} already done. Next: reload the proxies (SIGHUP) so they load {}, then \
         DUALWRITE BACKFILL {} START",
        applied.steps_run,
        applied.steps_skipped,
        args.rules.display(),
        migration.name
    )?;
    Ok(applied)
}

/// Runs one step unless the catalog shows it done; returns whether it ran.
async fn run_step(client: &Client, m: &Migration, step: &DdlStep) -> anyhow::Result<bool> {
    let shadow = m.shadow.qualified().to_string();
    match step {
        DdlStep::CreateTable { columns, sql } => {
            let existing: Vec<String> = client
                .query(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1)::oid AND attnum > 0
                       AND NOT attisdropped ORDER BY attnum",
                    &[&shadow],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !existing.is_empty() {
                anyhow::ensure!(
                    existing == *columns,
                    "{shadow} exists with columns ({}) instead of the planned ({}): it is not this plan's shadow",
                    existing.join(", "),
                    columns.join(", ")
                );
                return Ok(false);
            }
            client.batch_execute(sql).await?;
        }
        DdlStep::CreateIndex { name, sql } => {
            let schema = m.shadow.schema_or_public();
            let found = client
                .query_opt(
                    "SELECT i.indisvalid, i.indrelid = to_regclass($3)::oid
                       FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
                      WHERE c.relname = $1 AND c.relnamespace = $2::text::regnamespace",
                    &[name, &quote_ident(schema), &shadow],
                )
                .await?;
            match found.map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1))) {
                Some((_, false)) => anyhow::bail!("an index named {name} exists on another table"),
                Some((true, true)) => return Ok(false),
                Some((false, true)) => {
                    // An interrupted concurrent build leaves an invalid index that is never used: build anew.
                    let index = format!("{}.{}", quote_ident(schema), quote_ident(name));
                    client.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")).await?;
                }
                None => {}
            }
            client.batch_execute(sql).await?;
        }
        DdlStep::AddConstraint { name, sql, .. } | DdlStep::ValidateConstraint { name, sql } => {
            let validated: Option<bool> = client
                .query_opt(
                    "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1)::oid AND conname = $2",
                    &[&shadow, name],
                )
                .await?
                .map(|r| r.get(0));
            let done = match step {
                DdlStep::AddConstraint { .. } => validated.is_some(),
                _ => validated == Some(true),
            };
            if done {
                return Ok(false);
            }
            client.batch_execute(sql).await?;
        }
        DdlStep::CreatePolicy { name, sql } => {
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = to_regclass($1)::oid AND polname = $2)",
                    &[&shadow, name],
                )
                .await?
                .get(0);
            if exists {
                return Ok(false);
            }
            client.batch_execute(sql).await?;
        }
        DdlStep::RowSecurity { force, sql } => {
            let done: bool = client
                .query_one(
                    "SELECT CASE WHEN $2 THEN relforcerowsecurity ELSE relrowsecurity END
                       FROM pg_class WHERE oid = to_regclass($1)::oid",
                    &[&shadow, force],
                )
                .await?
                .get(0);
            if done {
                return Ok(false);
            }
            client.batch_execute(sql).await?;
        }
    }
    Ok(true)
}

/// Registers the migration as the proxy does at start and reload; returns whether it was new.
async fn register(client: &mut Client, planned: &RuleSet, m: &Migration, pg: &PgTarget) -> anyhow::Result<bool> {
    let known: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM dualwrite.migrations WHERE name = $1)", &[&m.name])
        .await?
        .get(0);
    if known {
        return Ok(false);
    }
    let actor = Actor { role: pg.config().get_user().unwrap_or("dualwrite").to_string(), client_addr: None };
    store::register_migrations(client, planned, &actor).await?;
    Ok(true)
}

/// The proxy's rules with the planned migration added, validated together (names, tables). `None` when the
/// file already holds the same migration; refused when it holds a different one of that name.
fn merged_rules(path: &Path, m: &Migration) -> anyhow::Result<Option<String>> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let origin = path.display().to_string();
    let mut migrations = match existing.trim().is_empty() {
        true => Vec::new(),
        false => RuleSet::from_toml(&existing, &origin)?.migrations,
    };
    if let Some(held) = migrations.iter().find(|held| held.name == m.name) {
        anyhow::ensure!(
            held == m,
            "{origin} already holds a different migration named {}: rename the plan (--name) or remove it",
            m.name
        );
        return Ok(None);
    }
    migrations.push(m.clone());
    RuleSet::new(migrations, &origin)?;
    Ok(Some(existing))
}

/// Appends the plan's rules to the proxy's rules file (under an exclusive lock, so concurrent applies do
/// not lose each other's migration); returns whether it was added.
fn add_to_rules_file(path: &Path, m: &Migration, plan_text: &str) -> anyhow::Result<bool> {
    let lock_path = path.with_extension("toml.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let Some(existing) = merged_rules(path, m)? else {
        return Ok(false);
    };
    let separator = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    write_file(path, &format!("{existing}{separator}{plan_text}"))?;
    Ok(true)
}
