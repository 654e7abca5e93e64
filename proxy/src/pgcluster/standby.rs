//! Streaming standbys of a throwaway cluster, for failover tests: `pg_basebackup -R` from a running
//! primary into a throwaway directory of its own, started as a hot standby on its own port (the copy's
//! settings file is written anew for it), promoted on demand. The standby streams from the primary over
//! the primary's unix socket as its superuser (trust, `local replication` in `pg_hba.conf`).

use super::{io_err, ClusterError, ClusterOptions, PgCluster, PG_CTL_TIMEOUT_SECS};

impl PgCluster {
    /// A hot standby of the running `primary`, streaming from it; roles and databases come with the copy
    /// (`options.roles` are not created again), `options.settings` apply on top of the primary's.
    pub fn start_standby_of(primary: &PgCluster, options: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let mut cluster = PgCluster::unstarted(&options)?;
        let output = cluster
            .server_command("pg_basebackup")
            .arg("-D")
            .arg(&cluster.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-h"])
            .arg(primary.socket_dir())
            .args(["-p", &primary.port().to_string(), "-U", primary.superuser()])
            .output()
            .map_err(io_err("running pg_basebackup"))?;
        cluster.check("pg_basebackup", output)?;
        // The copy's postgresql.conf already includes dualwrite_cluster.conf, which names the primary's
        // port and socket directory: `start_on_a_port` writes it for this cluster.
        cluster.start_on_a_port(&options.settings)?;
        Ok(cluster)
    }

    /// Ends recovery: the standby becomes a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["promote", "-w", "-t", PG_CTL_TIMEOUT_SECS])
    }
}
