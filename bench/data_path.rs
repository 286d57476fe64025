//! Benchmark: the octets of a message through the engine, both ways.
//!
//! `receive`: one SMTP session into `engine::smtp::Receiver` (EHLO, MAIL,
//! RCPT, DATA with a 64 KiB and a 4 KiB message of 72-octet text lines,
//! some dot-stuffed, fed in 8 KiB reads as the shell's read buffer does),
//! MB/s of message content. `stuff`: `engine::client::stuff` over the same
//! content in 64 KiB parts, as delivery streams it. These are the per-octet
//! loops of the data path (relay.sh's profile shows where they stand among
//! the rest); the figures are CPU throughput of one core, not end to end.
//!
//! Run with `cargo bench --bench data_path`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice::engine::client::stuff;
use sluice::engine::smtp::{BareLineEndings, Event, Receiver, ReceiverConfig};

/// Minimum wall time per measurement.
const TARGET: Duration = Duration::from_millis(1500);
/// The shell's read size (shell::server's READ_BUFFER).
const READ: usize = 8 * 1024;

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0u32;
    while m.len() < size {
        // 70 octets of text + CRLF; every 16th line starts with a dot.
        if i % 16 == 0 {
            m.push(b'.');
        }
        m.extend_from_slice(
            format!("{i:08} lorem ipsum dolor sit amet, consectetur adipiscing elit sed")
                .as_bytes(),
        );
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

/// The message as a client sends it after DATA: dot-stuffed, then `.`.
fn wire(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; msg.len() * 2 + 3];
    let n = stuff(msg, &mut true, &mut out).expect("room");
    out.truncate(n);
    out.extend_from_slice(b".\r\n");
    out
}

/// One session: returns the content octets the receiver handed out.
fn receive(session: &[u8]) -> usize {
    let mut rx = Receiver::new(ReceiverConfig {
        hostname: "mx.bench",
        max_message_size: 64 << 20,
        max_recipients: 100,
        starttls: false,
        tls: false,
        bare_line_endings: BareLineEndings::Refuse,
        auth: false,
        auth_plaintext: false,
    });
    rx.greet();
    let mut body = 0;
    for read in session.chunks(READ) {
        let mut pos = 0;
        loop {
            let n = rx.output().len();
            rx.output_sent(n);
            let st = rx.feed(&read[pos..]);
            pos += st.consumed;
            match st.event {
                Some(Event::Body(b)) => body += black_box(b).len(),
                Some(Event::Mail(_)) | Some(Event::Rcpt(_)) => rx.accept(),
                Some(Event::MessageEnd { .. }) => rx.accept_message("Q"),
                Some(_) => {}
                None if pos >= read.len() || st.consumed == 0 => break,
                None => {}
            }
        }
    }
    body
}

fn measure(name: &str, octets: usize, mut f: impl FnMut() -> usize) {
    let t0 = Instant::now();
    let mut passes = 0u64;
    while t0.elapsed() < TARGET {
        black_box(f());
        passes += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{name:<36} {:>9.1} MB/s  ({passes} passes, {secs:.2} s)",
        octets as f64 * passes as f64 / secs / 1e6
    );
}

fn main() {
    for size in [64 * 1024, 4 * 1024] {
        let msg = message(size);
        let mut session =
            b"EHLO c.bench\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
        session.extend_from_slice(&wire(&msg));
        session.extend_from_slice(b"QUIT\r\n");
        assert_eq!(
            receive(&session),
            msg.len(),
            "the receiver hands out the whole message"
        );
        measure(
            &format!("receive {} KiB message", size / 1024),
            msg.len(),
            || receive(&session),
        );
        let mut out = vec![0u8; 2 * 64 * 1024];
        measure(
            &format!("stuff {} KiB message", size / 1024),
            msg.len(),
            || {
                let mut ls = true;
                msg.chunks(64 * 1024)
                    .map(|part| stuff(part, &mut ls, &mut out).unwrap_or(0))
                    .sum()
            },
        );
    }
}
