//! Encoding the proxy's own answers ([`LocalReply`]) as the messages Postgres would send for them.

use bytes::{Bytes, BytesMut};

use super::verdict::{LocalReply, LocalResult};
use crate::protocol::messages::{self, SqlError};

fn put_result(out: &mut BytesMut, result: &LocalResult, with_description: bool) {
    if with_description && !result.columns.is_empty() {
        out.extend_from_slice(&messages::row_description(&result.columns));
    }
    for row in &result.rows {
        out.extend_from_slice(&messages::data_row(row));
    }
    out.extend_from_slice(&messages::command_complete(&result.tag));
}

/// The answer to a simple Query, without the final ReadyForQuery (added when it is sent).
pub fn simple_query(reply: &LocalReply) -> Bytes {
    let mut out = BytesMut::new();
    for result in &reply.results {
        put_result(&mut out, result, true);
    }
    if let Some(err) = &reply.error {
        out.extend_from_slice(&messages::error_response(err));
    }
    if reply.results.is_empty() && reply.error.is_none() {
        out.extend_from_slice(&[b'I', 0, 0, 0, 4]);
    }
    out.freeze()
}

pub fn error(err: &SqlError) -> Bytes {
    messages::error_response(err)
}

/// A statement the proxy answers itself in the extended protocol.
#[derive(Debug)]
pub struct LocalStatement {
    pub param_types: Vec<u32>,
    pub result: LocalResult,
}

impl LocalStatement {
    /// Answer to Describe: ParameterDescription (statements only), then RowDescription or NoData.
    pub fn describe(&self, statement: bool) -> Bytes {
        let mut out = BytesMut::new();
        if statement {
            out.extend_from_slice(&messages::parameter_description(self.param_types.clone()));
        }
        if self.result.columns.is_empty() {
            out.extend_from_slice(&messages::no_data());
        } else {
            out.extend_from_slice(&messages::row_description(&self.result.columns));
        }
        out.freeze()
    }

    /// Answer to Execute: the rows and the command tag.
    pub fn execute(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_result(&mut out, &self.result, false);
        out.freeze()
    }
}
