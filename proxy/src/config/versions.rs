//! `[versions]` of the proxy config: default `dualwrite.version` per role and per application_name (checked
//! against the rules by `VersionDefaults::validate`, in `version`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-role and per-application_name default versions from the config (`[versions]` section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionDefaults {
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    #[serde(default)]
    pub applications: BTreeMap<String, String>,
}
