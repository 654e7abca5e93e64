//! The arms of the benchmark: which endpoint a client talks to and which dual-write mechanism is active.

use serde::{Deserialize, Serialize};

use crate::pgbench::{Mode, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Arm {
    Direct,
    Pgbouncer,
    DwNoRules,
    DwElsewhere,
    DwDualWrite,
    /// The same dual write with the change-data-capture watch streaming its slot (armed only for its runs).
    DwDualWriteWatch,
    TriggerDirect,
    TriggerPgbouncer,
    /// pgbouncer in transaction mode with a pool of [`POOL_SIZE`] server connections.
    PgbouncerTx,
    /// dualwrite (no rules) as the pooler, transaction mode, the same pool size.
    DwTx,
    /// Reference, not a contender: the CTE the proxy's rewrite produces, written by hand into the pgbench
    /// script and sent directly. It is the floor the proxy's dual write can reach on the database side.
    CteDirect,
    /// Reference, not a contender: `floor-relay --engine tokio --timers`, bytes copied between each client
    /// and its own server connection on per-CPU current-thread runtimes with the time driver, as
    /// dualwrite's session threads run, and no protocol work. The floor of a tokio relay.
    FloorTokio,
    /// Reference: the same without the time driver (`floor-relay --engine tokio`).
    FloorTokioIo,
    /// Reference: `floor-relay --engine mio`, one readiness loop per CPU serving every ready socket before
    /// it blocks again (pgbouncer's model), and no protocol work.
    FloorMio,
    /// dualwrite without rules on one session thread, against `dw-norules`' one per CPU.
    DwNoRules1,
    /// Reference: `floor-tokio` on one session thread (`--threads 1`).
    FloorTokio1,
    /// Reference: `floor-mio` on one thread, pgbouncer's model exactly: one loop for every socket.
    FloorMio1,
}

/// The engines of `floor-relay` (bench/src/bin/floor-relay.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorEngine {
    TokioTimers,
    TokioIo,
    Mio,
    TokioTimersOneThread,
    MioOneThread,
}

impl FloorEngine {
    pub const ALL: [FloorEngine; 5] = [
        FloorEngine::TokioTimers,
        FloorEngine::TokioIo,
        FloorEngine::Mio,
        FloorEngine::TokioTimersOneThread,
        FloorEngine::MioOneThread,
    ];

    /// The arguments of `floor-relay` that choose this engine (threads: one per CPU unless given).
    pub fn args(self) -> &'static [&'static str] {
        match self {
            FloorEngine::TokioTimers => &["--engine", "tokio", "--timers"],
            FloorEngine::TokioIo => &["--engine", "tokio"],
            FloorEngine::Mio => &["--engine", "mio"],
            FloorEngine::TokioTimersOneThread => &["--engine", "tokio", "--timers", "--threads", "1"],
            FloorEngine::MioOneThread => &["--engine", "mio", "--threads", "1"],
        }
    }
}

/// Where an arm's clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Postgres,
    Pgbouncer,
    PgbouncerTx,
    Proxy(ProxyKind),
    Floor(FloorEngine),
}

/// The proxy instances the run starts, one per rules set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum ProxyKind {
    NoRules,
    Elsewhere,
    DualWrite,
    DualWriteWatch,
    /// No rules, `pool_mode = "transaction"` with a pool of [`POOL_SIZE`].
    NoRulesTx,
    /// No rules, one session thread (`--session-threads 1`).
    NoRulesOneThread,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 6] = [
        ProxyKind::NoRules,
        ProxyKind::Elsewhere,
        ProxyKind::DualWrite,
        ProxyKind::DualWriteWatch,
        ProxyKind::NoRulesTx,
        ProxyKind::NoRulesOneThread,
    ];
}

/// Server connections per pool of the transaction-mode arms (pgbouncer's `default_pool_size`, dualwrite's
/// `pool_size`): a few per core, where a CPU-bound server does best, and far fewer than the clients.
pub const POOL_SIZE: u32 = 16;

impl Arm {
    pub const ALL: [Arm; 17] = [
        Arm::Direct,
        Arm::Pgbouncer,
        Arm::DwNoRules,
        Arm::DwElsewhere,
        Arm::DwDualWrite,
        Arm::DwDualWriteWatch,
        Arm::TriggerDirect,
        Arm::TriggerPgbouncer,
        Arm::CteDirect,
        Arm::PgbouncerTx,
        Arm::DwTx,
        Arm::FloorTokio,
        Arm::FloorTokioIo,
        Arm::FloorMio,
        Arm::FloorTokio1,
        Arm::FloorMio1,
        Arm::DwNoRules1,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Pgbouncer => "pgbouncer",
            Arm::DwNoRules => "dw-norules",
            Arm::DwElsewhere => "dw-elsewhere",
            Arm::DwDualWrite => "dw-dualwrite",
            Arm::DwDualWriteWatch => "dw-dualwrite-watch",
            Arm::TriggerDirect => "trigger-direct",
            Arm::TriggerPgbouncer => "trigger-pgbouncer",
            Arm::CteDirect => "cte-direct",
            Arm::PgbouncerTx => "pgbouncer-tx",
            Arm::DwTx => "dw-tx",
            Arm::FloorTokio => "floor-tokio",
            Arm::FloorTokioIo => "floor-tokio-io",
            Arm::FloorMio => "floor-mio",
            Arm::DwNoRules1 => "dw-norules-1",
            Arm::FloorTokio1 => "floor-tokio-1",
            Arm::FloorMio1 => "floor-mio-1",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Arm::Direct => "pgbench straight to Postgres (loopback TCP)",
            Arm::Pgbouncer => "through pgbouncer, session mode",
            Arm::DwNoRules => "through dualwrite, no rules file (pure passthrough)",
            Arm::DwElsewhere => {
                "through dualwrite, a migration in dual_write on `bench_untouched`, a table the workload never touches"
            }
            Arm::DwDualWrite => {
                "through dualwrite dual-writing `pgbench_accounts` into `pgbench_accounts_v2` (abalance renamed to balance and widened to bigint)"
            }
            Arm::DwDualWriteWatch => {
                "dw-dualwrite with the change-data-capture watch on (its logical slot streamed and every transaction paired)"
            }
            Arm::TriggerDirect => {
                "PL/pgSQL AFTER ROW trigger upserting into the same shadow, pgbench straight to Postgres"
            }
            Arm::TriggerPgbouncer => "the same trigger, through pgbouncer (one hop, like the proxy)",
            Arm::CteDirect => {
                "reference: the proxy's CTE dual write written by hand in the pgbench script, straight to Postgres"
            }
            Arm::PgbouncerTx => "through pgbouncer, transaction mode, 16 server connections (-M simple and extended: pgbouncer before 1.21 cannot pool prepared statements)",
            Arm::DwTx => "through dualwrite, no rules, transaction mode, 16 server connections",
            Arm::FloorTokio => {
                "reference: a bare tokio relay (bytes copied, no protocol work), per-CPU current-thread runtimes with the time driver, as dualwrite's"
            }
            Arm::FloorTokioIo => "reference: the same bare tokio relay without the time driver",
            Arm::FloorMio => {
                "reference: a bare relay on one mio readiness loop per CPU (every ready socket served per wake-up, pgbouncer's model)"
            }
            Arm::DwNoRules1 => "through dualwrite, no rules file, one session thread (`--session-threads 1`)",
            Arm::FloorTokio1 => "reference: floor-tokio on one session thread",
            Arm::FloorMio1 => "reference: floor-mio on one thread (one loop for every socket, as pgbouncer)",
        }
    }

    pub fn endpoint(self) -> Endpoint {
        match self {
            Arm::Direct | Arm::TriggerDirect | Arm::CteDirect => Endpoint::Postgres,
            Arm::Pgbouncer | Arm::TriggerPgbouncer => Endpoint::Pgbouncer,
            Arm::PgbouncerTx => Endpoint::PgbouncerTx,
            Arm::DwTx => Endpoint::Proxy(ProxyKind::NoRulesTx),
            Arm::DwNoRules => Endpoint::Proxy(ProxyKind::NoRules),
            Arm::DwElsewhere => Endpoint::Proxy(ProxyKind::Elsewhere),
            Arm::DwDualWrite => Endpoint::Proxy(ProxyKind::DualWrite),
            Arm::DwDualWriteWatch => Endpoint::Proxy(ProxyKind::DualWriteWatch),
            Arm::FloorTokio => Endpoint::Floor(FloorEngine::TokioTimers),
            Arm::FloorTokioIo => Endpoint::Floor(FloorEngine::TokioIo),
            Arm::FloorMio => Endpoint::Floor(FloorEngine::Mio),
            Arm::DwNoRules1 => Endpoint::Proxy(ProxyKind::NoRulesOneThread),
            Arm::FloorTokio1 => Endpoint::Floor(FloorEngine::TokioTimersOneThread),
            Arm::FloorMio1 => Endpoint::Floor(FloorEngine::MioOneThread),
        }
    }

    /// The dual-write trigger must be enabled for these arms and disabled for all others.
    pub fn needs_trigger(self) -> bool {
        matches!(self, Arm::TriggerDirect | Arm::TriggerPgbouncer)
    }

    /// Dual-write arms only differ from their plain counterparts when the workload writes.
    pub fn runs(self, workload: Workload) -> bool {
        match workload {
            Workload::SelectOnly => {
                !matches!(self, Arm::TriggerDirect | Arm::TriggerPgbouncer | Arm::CteDirect | Arm::DwDualWriteWatch)
            }
            Workload::TpcB => true,
        }
    }

    /// pgbouncer 1.18 (Debian's) in transaction mode cannot run protocol-level prepared statements: its
    /// pgbench runs would fail on the second transaction, so the arm skips `-M prepared`.
    pub fn runs_mode(self, mode: Mode) -> bool {
        !(self == Arm::PgbouncerTx && mode == Mode::Prepared)
    }

    /// Reference arms that run only when `--arms` names them.
    pub fn only_when_chosen(self) -> bool {
        matches!(self.endpoint(), Endpoint::Floor(_) | Endpoint::Proxy(ProxyKind::NoRulesOneThread))
    }

    /// Arms also run at the extra client counts of the select-only table (issue 2: 8 and 32 clients).
    pub fn in_extra_select_counts(self) -> bool {
        matches!(self, Arm::Direct | Arm::Pgbouncer | Arm::DwNoRules)
    }
}
