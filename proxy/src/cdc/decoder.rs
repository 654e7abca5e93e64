//! Decoder of `pgoutput` protocol version 1, the logical decoding output plugin shipped with PostgreSQL:
//! one message per row of `pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)`. Pure and
//! bounds-checked: a short or unknown message is an error, never a panic. Only the parts the watch reads
//! are kept (relation names and columns, tuple values as text, transaction boundaries, logical messages).

use std::fmt;

/// A WAL position (`pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (high, low) = s.split_once('/').ok_or_else(|| format!("not an LSN: {s:?}"))?;
        let part = |p: &str| u64::from_str_radix(p, 16).map_err(|_| format!("not an LSN: {s:?}"));
        Ok(Lsn((part(high)? << 32) | part(low)?))
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch (never a key column).
    Unchanged,
    Text(String),
}

/// A column of a relation as the `Relation` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Part of the replica identity (the primary key under `REPLICA IDENTITY DEFAULT`).
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    /// `commit_time`: microseconds since 2000-01-01 UTC, as Postgres stores timestamps.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old`: the old key (or whole row under `REPLICA IDENTITY FULL`) when the key changed.
    Update {
        relation: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message`.
    Logical {
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    /// Origin and Type messages: nothing the watch needs.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {tag:?}: {reason}")]
pub struct DecodeError {
    pub tag: char,
    pub reason: String,
}

struct Reader<'a> {
    bytes: &'a [u8],
    tag: char,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &str) -> Result<T, DecodeError> {
        Err(DecodeError { tag: self.tag, reason: reason.to_string() })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return self.fail("message is truncated");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(end) = self.bytes.iter().position(|b| *b == 0) else {
            return self.fail("string without its terminating NUL");
        };
        let text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return self.fail("negative column count");
        }
        Ok(n as usize)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.count()?;
        let mut values = Vec::with_capacity(n.min(self.bytes.len()));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return self.fail("negative value length");
                    }
                    Value::Text(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
                }
                other => return self.fail(&format!("unknown tuple value kind {:?}", other as char)),
            });
        }
        Ok(values)
    }

    fn finish(self, message: Message) -> Result<Message, DecodeError> {
        if self.bytes.is_empty() {
            Ok(message)
        } else {
            self.fail("trailing bytes")
        }
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let Some((&tag, body)) = bytes.split_first() else {
        return Err(DecodeError { tag: '?', reason: "empty message".into() });
    };
    let mut r = Reader { bytes: body, tag: tag as char };
    let message = match tag {
        b'B' => Message::Begin { final_lsn: r.lsn()?, commit_time: r.i64()?, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: r.lsn()?, end_lsn: r.lsn()?, commit_time: r.i64()? }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let n = r.count()?;
            let mut columns = Vec::with_capacity(n.min(body.len()));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let (_type_oid, _typmod) = (r.u32()?, r.i32()?);
                columns.push(Column { name, key: flags & 1 == 1 });
            }
            Message::Relation(Relation { oid, schema, name, columns })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return r.fail("insert without its new tuple");
            }
            Message::Insert { relation, new: r.tuple()? }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return r.fail("update without its new tuple");
            }
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return r.fail("delete without its old key");
            }
            Message::Delete { relation, old: r.tuple()? }
        }
        b'T' => {
            let n = r.i32()?;
            if n < 0 {
                return r.fail("negative relation count");
            }
            let _options = r.u8()?;
            let mut relations = Vec::with_capacity((n as usize).min(body.len()));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { relations }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let _lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.i32()?;
            if len < 0 {
                return r.fail("negative content length");
            }
            let content = r.take(len as usize)?.to_vec();
            Message::Logical { transactional, prefix, content }
        }
        b'O' => {
            let _lsn = r.lsn()?;
            let _name = r.string()?;
            Message::Other
        }
        b'Y' => {
            let _oid = r.u32()?;
            let _schema = r.string()?;
            let _name = r.string()?;
            Message::Other
        }
        other => return Err(DecodeError { tag: other as char, reason: "unknown message type".into() }),
    };
    r.finish(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way pgoutput writes them.
    #[derive(Default)]
    struct Out(Vec<u8>);

    impl Out {
        fn tag(c: char) -> Out {
            Out(vec![c as u8])
        }
        fn u8(mut self, v: u8) -> Out {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Out {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Out {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Out {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Out {
            self.0.extend(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Out {
            let mut out = self.u8(b't').i32(v.len() as i32);
            out.0.extend(v.as_bytes());
            out
        }
    }

    #[test]
    fn transaction_boundaries() {
        let begin = Out::tag('B').i64(0x1_0000_0010).i64(42).i32(7).0;
        assert_eq!(decode(&begin).unwrap(), Message::Begin { final_lsn: Lsn(0x1_0000_0010), commit_time: 42, xid: 7 });
        let commit = Out::tag('C').u8(0).i64(100).i64(120).i64(43).0;
        assert_eq!(
            decode(&commit).unwrap(),
            Message::Commit { commit_lsn: Lsn(100), end_lsn: Lsn(120), commit_time: 43 }
        );
    }

    #[test]
    fn relation_with_key_flags() {
        let rel = Out::tag('R').i32(16384).s("public").s("users").u8(b'd').i16(2);
        let rel = rel.u8(1).s("id").i32(20).i32(-1).u8(0).s("name").i32(25).i32(-1).0;
        let Message::Relation(r) = decode(&rel).unwrap() else { panic!() };
        assert_eq!((r.oid, r.schema.as_str(), r.name.as_str()), (16384, "public", "users"));
        assert_eq!(
            r.columns,
            vec![Column { name: "id".into(), key: true }, Column { name: "name".into(), key: false }]
        );
    }

    #[test]
    fn row_changes() {
        let insert = Out::tag('I').i32(5).u8(b'N').i16(3).text("1").u8(b'n').u8(b'u').0;
        assert_eq!(
            decode(&insert).unwrap(),
            Message::Insert { relation: 5, new: vec![Value::Text("1".into()), Value::Null, Value::Unchanged] }
        );
        let update = Out::tag('U').i32(5).u8(b'N').i16(1).text("2").0;
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update { relation: 5, old: None, new: vec![Value::Text("2".into())] }
        );
        let moved = Out::tag('U').i32(5).u8(b'K').i16(1).text("1").u8(b'N').i16(1).text("2").0;
        assert_eq!(
            decode(&moved).unwrap(),
            Message::Update {
                relation: 5,
                old: Some(vec![Value::Text("1".into())]),
                new: vec![Value::Text("2".into())]
            }
        );
        let delete = Out::tag('D').i32(5).u8(b'K').i16(2).text("9").u8(b'n').0;
        assert_eq!(
            decode(&delete).unwrap(),
            Message::Delete { relation: 5, old: vec![Value::Text("9".into()), Value::Null] }
        );
        let truncate = Out::tag('T').i32(2).u8(0).i32(5).i32(6).0;
        assert_eq!(decode(&truncate).unwrap(), Message::Truncate { relations: vec![5, 6] });
    }

    #[test]
    fn logical_message() {
        let mut m = Out::tag('M').u8(1).i64(77).s("dualwrite").i32(8);
        m.0.extend(b"backfill");
        assert_eq!(
            decode(&m.0).unwrap(),
            Message::Logical { transactional: true, prefix: "dualwrite".into(), content: b"backfill".to_vec() }
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let insert = Out::tag('I').i32(5).u8(b'N').i16(1).text("12345").0;
        for cut in 0..insert.len() {
            assert!(decode(&insert[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut trailing = insert.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        assert!(decode(&Out::tag('I').i32(5).u8(b'N').i16(-1).0).is_err());
        assert!(decode(&Out::tag('I').i32(5).u8(b'N').i16(1).u8(b't').i32(-5).0).is_err());
        assert!(decode(b"Z").is_err());
        assert!(decode(&Out::tag('R').i32(1).0).is_err());
    }

    #[test]
    fn lsn_text_round_trip() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("nope".parse::<Lsn>().is_err());
    }
}
