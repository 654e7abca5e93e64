//! What a throwaway cluster is built with: password roles, settings, and the `pg_ctl` shutdown modes.

use std::path::PathBuf;

/// How a named role authenticates over TCP (pg_hba method and the password hash stored for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordAuth {
    ScramSha256,
    Md5,
    /// Cleartext password in the protocol (`password` in pg_hba), stored as SCRAM.
    Cleartext,
}

impl PasswordAuth {
    pub(super) fn hba_method(self) -> &'static str {
        match self {
            PasswordAuth::ScramSha256 => "scram-sha-256",
            PasswordAuth::Md5 => "md5",
            PasswordAuth::Cleartext => "password",
        }
    }

    pub(super) fn password_encryption(self) -> &'static str {
        match self {
            PasswordAuth::Md5 => "md5",
            PasswordAuth::ScramSha256 | PasswordAuth::Cleartext => "scram-sha-256",
        }
    }
}

/// A login role created after the first start, authenticated by password over TCP.
#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    pub password: String,
    pub auth: PasswordAuth,
    pub superuser: bool,
}

impl Role {
    pub fn new(name: impl Into<String>, password: impl Into<String>, auth: PasswordAuth) -> Self {
        Role { name: name.into(), password: password.into(), auth, superuser: false }
    }

    pub fn superuser(mut self) -> Self {
        self.superuser = true;
        self
    }
}

/// How to build a cluster. Everything not listed authenticates with `trust`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Directory with `initdb`, `pg_ctl`, `postgres`, `psql`; found automatically when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Parent of the temporary directory; the system temp dir when `None`.
    pub base_dir: Option<PathBuf>,
    /// Name of the bootstrap superuser (`initdb -U`).
    pub superuser: String,
    pub roles: Vec<Role>,
    /// Extra `postgresql.conf` settings (name, value), applied after the defaults.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin_dir: None,
            base_dir: None,
            superuser: "postgres".to_owned(),
            roles: Vec::new(),
            settings: Vec::new(),
        }
    }
}

impl ClusterOptions {
    pub fn role(mut self, role: Role) -> Self {
        self.roles.push(role);
        self
    }

    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// `pg_ctl -m` shutdown modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Terminate sessions, roll back their transactions, checkpoint.
    Fast,
    /// Quit at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    pub(super) fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}
