//! Assembles decoded pgoutput messages into committed transactions of key-level changes (pure). Only
//! relations the watch was told about are kept; each row change is reduced to its operation and the text
//! of its key columns (never the other values), which is all pairing needs.

use std::collections::HashMap;

use super::decoder::{Lsn, Message, Relation, Value};

/// The key columns' values as text, in the migration's key order.
pub type Key = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One change to a watched table. `key` is `None` for a TRUNCATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub relation: u32,
    pub op: Op,
    pub key: Option<Key>,
    /// For an UPDATE that moved the row to another key: the key it left.
    pub old_key: Option<Key>,
}

/// Which proxy job wrote a transaction, from the `dualwrite` logical message it emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Backfill,
    Repair,
}

/// The prefix of the logical messages by which the proxy's own jobs mark their transactions.
pub const MARK_PREFIX: &str = "dualwrite";

impl Source {
    fn from_mark(content: &[u8]) -> Option<Source> {
        match content {
            b"backfill" | b"sweep" => Some(Source::Backfill),
            b"repair" => Some(Source::Repair),
            _ => None,
        }
    }
}

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// Where the slot may be advanced to once this transaction is handled.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    pub changes: Vec<Change>,
    pub source: Option<Source>,
}

impl Transaction {
    /// The commit time as seconds since the Unix epoch.
    pub fn commit_unix_seconds(&self) -> f64 {
        const POSTGRES_EPOCH: f64 = 946_684_800.0;
        self.commit_time as f64 / 1e6 + POSTGRES_EPOCH
    }
}

/// A watched relation: its key columns by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedRelation {
    pub oid: u32,
    pub key: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssembleError {
    #[error("relation {0} changed before its Relation message")]
    UnknownRelation(u32),
    #[error("relation {relation} has no column {column} (a key column of its migration)")]
    MissingKeyColumn { relation: u32, column: String },
    #[error("a change to relation {0} lacks a key value")]
    MissingKeyValue(u32),
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
}

/// Turns a stream of messages into transactions.
#[derive(Debug, Default)]
pub struct Assembler {
    watched: HashMap<u32, Vec<String>>,
    /// Key column positions of each watched relation, from its latest Relation message.
    positions: HashMap<u32, Vec<usize>>,
    open: Option<Transaction>,
}

impl Assembler {
    pub fn new(watched: &[WatchedRelation]) -> Assembler {
        let watched = watched.iter().map(|w| (w.oid, w.key.clone())).collect();
        Assembler { watched, ..Assembler::default() }
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one message; returns the transaction it committed, if any.
    pub fn push(&mut self, message: Message) -> Result<Option<Transaction>, AssembleError> {
        match message {
            Message::Begin { final_lsn, commit_time, xid } => {
                self.open = Some(Transaction { xid, commit_lsn: final_lsn, commit_time, ..Transaction::default() });
            }
            Message::Commit { commit_lsn, end_lsn, commit_time } => {
                let mut tx = self.open.take().ok_or(AssembleError::OutsideTransaction("Commit"))?;
                (tx.commit_lsn, tx.end_lsn, tx.commit_time) = (commit_lsn, end_lsn, commit_time);
                return Ok(Some(tx));
            }
            Message::Relation(relation) => self.relation(&relation)?,
            Message::Insert { relation, new } => self.change(relation, Op::Insert, None, &new)?,
            Message::Update { relation, old, new } => self.change(relation, Op::Update, old.as_deref(), &new)?,
            Message::Delete { relation, old } => self.change(relation, Op::Delete, None, &old)?,
            Message::Truncate { relations } => {
                let tx = self.open.as_mut().ok_or(AssembleError::OutsideTransaction("Truncate"))?;
                for relation in relations.into_iter().filter(|r| self.watched.contains_key(r)) {
                    tx.changes.push(Change { relation, op: Op::Truncate, key: None, old_key: None });
                }
            }
            Message::Logical { transactional: true, prefix, content } if prefix == MARK_PREFIX => {
                if let (Some(tx), Some(source)) = (self.open.as_mut(), Source::from_mark(&content)) {
                    tx.source = Some(source);
                }
            }
            Message::Logical { .. } | Message::Other => {}
        }
        Ok(None)
    }

    fn relation(&mut self, relation: &Relation) -> Result<(), AssembleError> {
        let Some(key) = self.watched.get(&relation.oid) else { return Ok(()) };
        let positions =
            key.iter()
                .map(|column| {
                    relation.columns.iter().position(|c| c.name == *column).ok_or_else(|| {
                        AssembleError::MissingKeyColumn { relation: relation.oid, column: column.clone() }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
        self.positions.insert(relation.oid, positions);
        Ok(())
    }

    fn change(&mut self, relation: u32, op: Op, old: Option<&[Value]>, new: &[Value]) -> Result<(), AssembleError> {
        if !self.watched.contains_key(&relation) {
            return Ok(());
        }
        let positions = self.positions.get(&relation).ok_or(AssembleError::UnknownRelation(relation))?;
        let key_of = |values: &[Value]| -> Result<Key, AssembleError> {
            positions
                .iter()
                .map(|&i| match values.get(i) {
                    Some(Value::Text(text)) => Ok(text.clone()),
                    _ => Err(AssembleError::MissingKeyValue(relation)),
                })
                .collect()
        };
        let key = key_of(new)?;
        let old_key = match old {
            Some(old) => Some(key_of(old)?).filter(|old| *old != key),
            None => None,
        };
        let tx = self.open.as_mut().ok_or(AssembleError::OutsideTransaction("row change"))?;
        tx.changes.push(Change { relation, op, key: Some(key), old_key });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::decoder::{Column, Lsn};

    fn relation(oid: u32, columns: &[&str]) -> Message {
        Message::Relation(Relation {
            oid,
            schema: "public".into(),
            name: format!("t{oid}"),
            columns: columns.iter().map(|c| Column { name: c.to_string(), key: *c == "id" }).collect(),
        })
    }

    fn text(values: &[&str]) -> Vec<Value> {
        values.iter().map(|v| if *v == "NULL" { Value::Null } else { Value::Text(v.to_string()) }).collect()
    }

    #[test]
    fn keeps_only_watched_relations_and_key_text() {
        let mut a = Assembler::new(&[WatchedRelation { oid: 1, key: vec!["id".into()] }]);
        assert_eq!(a.push(Message::Begin { final_lsn: Lsn(9), commit_time: 5, xid: 77 }).unwrap(), None);
        a.push(relation(1, &["name", "id"])).unwrap();
        a.push(Message::Insert { relation: 1, new: text(&["secret", "4"]) }).unwrap();
        a.push(Message::Insert { relation: 2, new: text(&["x"]) }).unwrap();
        a.push(Message::Update { relation: 1, old: Some(text(&["NULL", "4"])), new: text(&["s", "5"]) }).unwrap();
        a.push(Message::Delete { relation: 1, old: text(&["NULL", "5"]) }).unwrap();
        a.push(Message::Truncate { relations: vec![1, 2] }).unwrap();
        a.push(Message::Logical { transactional: true, prefix: "dualwrite".into(), content: b"backfill".to_vec() })
            .unwrap();
        let tx = a.push(Message::Commit { commit_lsn: Lsn(10), end_lsn: Lsn(11), commit_time: 6 }).unwrap().unwrap();
        assert_eq!((tx.xid, tx.commit_lsn, tx.end_lsn, tx.commit_time), (77, Lsn(10), Lsn(11), 6));
        assert_eq!(tx.source, Some(Source::Backfill));
        let ops: Vec<_> = tx.changes.iter().map(|c| (c.op, c.key.clone(), c.old_key.clone())).collect();
        assert_eq!(
            ops,
            vec![
                (Op::Insert, Some(vec!["4".to_string()]), None),
                (Op::Update, Some(vec!["5".to_string()]), Some(vec!["4".to_string()])),
                (Op::Delete, Some(vec!["5".to_string()]), None),
                (Op::Truncate, None, None),
            ]
        );
    }

    #[test]
    fn unmarked_and_foreign_messages_leave_no_source() {
        let mut a = Assembler::new(&[]);
        a.push(Message::Begin { final_lsn: Lsn(1), commit_time: 0, xid: 1 }).unwrap();
        a.push(Message::Logical { transactional: true, prefix: "other".into(), content: b"repair".to_vec() }).unwrap();
        a.push(Message::Logical { transactional: false, prefix: "dualwrite".into(), content: b"repair".to_vec() })
            .unwrap();
        let tx = a.push(Message::Commit { commit_lsn: Lsn(2), end_lsn: Lsn(3), commit_time: 0 }).unwrap().unwrap();
        assert_eq!(tx.source, None);
    }

    #[test]
    fn errors_on_a_change_it_cannot_key() {
        let mut a = Assembler::new(&[WatchedRelation { oid: 1, key: vec!["id".into()] }]);
        a.push(Message::Begin { final_lsn: Lsn(1), commit_time: 0, xid: 1 }).unwrap();
        assert_eq!(a.push(Message::Insert { relation: 1, new: text(&["1"]) }), Err(AssembleError::UnknownRelation(1)));
        assert!(matches!(a.push(relation(1, &["name"])), Err(AssembleError::MissingKeyColumn { .. })));
        a.push(relation(1, &["id"])).unwrap();
        assert_eq!(
            a.push(Message::Delete { relation: 1, old: text(&["NULL"]) }),
            Err(AssembleError::MissingKeyValue(1))
        );
    }
}
