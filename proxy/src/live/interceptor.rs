//! [`LiveInterceptor`]: the interceptor of a server with migrations, which starts each session's
//! interceptor on the `Live` of its database (or an `ElsewhereSession`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::databases::LiveDatabases;
use super::elsewhere::ElsewhereSession;
use super::session::LiveSession;
use crate::interceptor::{Interceptor, SessionInfo, SessionInterceptor};

/// The interceptor of a server with migrations: each session gets the [`Live`](super::Live) of the database its
/// startup packet names, or, on a database without migrations, a session that forwards everything.
pub struct LiveInterceptor(pub Arc<LiveDatabases>);

impl Interceptor for LiveInterceptor {
    fn start_session(&self, info: &SessionInfo) -> Option<Box<dyn SessionInterceptor>> {
        Some(match self.0.database(info.database()) {
            Some(live) => {
                let id = live.next_session.fetch_add(1, Ordering::Relaxed);
                Box::new(LiveSession::new(Arc::clone(live), info, id))
            }
            None => Box::new(ElsewhereSession::new(info.database(), self.0.holders())),
        })
    }
}
