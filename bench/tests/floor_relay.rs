//! `floor-relay`, the benchmark's reference relay, relays every byte both ways with each engine: a large
//! transfer through a TCP echo server comes back whole, for several clients at once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// An echo server on a free port: every connection gets back what it sends.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut stream, &mut writer);
            });
        }
    });
    port
}

struct Relay(Child, u16);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(engine: &[&str], upstream: u16) -> Relay {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_floor-relay"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &format!("127.0.0.1:{upstream}")])
        .args(engine)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let relay = Relay(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "floor-relay {engine:?} did not listen within 10 s");
        thread::sleep(Duration::from_millis(10));
    }
    relay
}

/// Sends `len` patterned bytes through the relay while reading the echo, and returns what came back.
fn round_trip(port: u16, len: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let sent: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let to_send = sent.clone();
    let sender = thread::spawn(move || writer.write_all(&to_send).unwrap());
    let mut received = vec![0u8; len];
    stream.read_exact(&mut received).unwrap();
    sender.join().unwrap();
    (sent, received)
}

#[test]
fn every_engine_relays_large_transfers_of_several_clients_whole() {
    let upstream = echo_server();
    let engines: [&[&str]; 4] = [
        &["--engine", "tokio", "--timers"],
        &["--engine", "tokio", "--threads", "1"],
        &["--engine", "mio"],
        &["--engine", "mio", "--threads", "1"],
    ];
    for engine in engines {
        let relay = start_relay(engine, upstream);
        let port = relay.1;
        let clients: Vec<_> = (0..4u8).map(|seed| thread::spawn(move || round_trip(port, 3 << 20, seed))).collect();
        for client in clients {
            let (sent, received) = client.join().unwrap();
            assert!(sent == received, "{engine:?}: the echo differs from what was sent");
        }
    }
}
