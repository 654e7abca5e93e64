//! The arms of the benchmark: which endpoint a client talks to and which dual-write mechanism is active.

use serde::{Deserialize, Serialize};

use crate::pgbench::Workload;

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
    /// Reference, not a contender: the CTE the proxy's rewrite produces, written by hand into the pgbench
    /// script and sent directly. It is the floor the proxy's dual write can reach on the database side.
    CteDirect,
}

/// Where an arm's clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Postgres,
    Pgbouncer,
    Proxy(ProxyKind),
}

/// The proxy instances the run starts, one per rules set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum ProxyKind {
    NoRules,
    Elsewhere,
    DualWrite,
    DualWriteWatch,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 4] =
        [ProxyKind::NoRules, ProxyKind::Elsewhere, ProxyKind::DualWrite, ProxyKind::DualWriteWatch];
}

impl Arm {
    pub const ALL: [Arm; 9] = [
        Arm::Direct,
        Arm::Pgbouncer,
        Arm::DwNoRules,
        Arm::DwElsewhere,
        Arm::DwDualWrite,
        Arm::DwDualWriteWatch,
        Arm::TriggerDirect,
        Arm::TriggerPgbouncer,
        Arm::CteDirect,
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
        }
    }

    pub fn endpoint(self) -> Endpoint {
        match self {
            Arm::Direct | Arm::TriggerDirect | Arm::CteDirect => Endpoint::Postgres,
            Arm::Pgbouncer | Arm::TriggerPgbouncer => Endpoint::Pgbouncer,
            Arm::DwNoRules => Endpoint::Proxy(ProxyKind::NoRules),
            Arm::DwElsewhere => Endpoint::Proxy(ProxyKind::Elsewhere),
            Arm::DwDualWrite => Endpoint::Proxy(ProxyKind::DualWrite),
            Arm::DwDualWriteWatch => Endpoint::Proxy(ProxyKind::DualWriteWatch),
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

    /// Arms also run at the extra client counts of the select-only table (issue 2: 8 and 32 clients).
    pub fn in_extra_select_counts(self) -> bool {
        matches!(self, Arm::Direct | Arm::Pgbouncer | Arm::DwNoRules)
    }
}
