//! Helpers of the pool_* integration tests: protocol frames a driver sends only in its own order
//! (extended-protocol messages without Sync), and one sample of a metrics scrape.

#![allow(dead_code)]

/// A Parse, Bind, Describe (statement), Close (statement), Execute or Sync frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    frame(b'P', &[name.as_bytes(), &[0], sql.as_bytes(), &[0, 0, 0]].concat())
}

pub fn bind(statement: &str) -> Vec<u8> {
    frame(b'B', &[&[0], statement.as_bytes(), &[0, 0, 0, 0, 0, 0, 0]].concat())
}

pub fn close(statement: &str) -> Vec<u8> {
    frame(b'C', &[b"S", statement.as_bytes(), &[0]].concat())
}

pub fn execute() -> Vec<u8> {
    frame(b'E', &[0, 0, 0, 0, 0])
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// The value of the first sample of `series` (name and labels as exported) in a scrape.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}
