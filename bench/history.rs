//! Benchmark: the cost of the mail-flow history on the accept path.
//!
//! `history::record` is what a session calls once per accepted message
//! (after its RECEIVE/ROUTE lines are made): the message's (domain,
//! location) pairs, one mutex hold, a few map updates. Measured here for a
//! 3-recipient message spread over 100 destinations, on one thread and on
//! two threads at once (the daemon's session threads on a 2-core box,
//! contending for the one lock), beside `history::flush` of the 100-row day
//! (encode under the lock, then temp file + fsync + rename + fsync dir).
//!
//! Run with `cargo bench --bench history`.

use sluice::shell::report::history;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Messages recorded per measurement and thread.
const N: usize = 200_000;

/// The pairs of message `i`: three recipients of contoso.com rewritten to
/// three of 100 location domains.
fn pairs(i: usize) -> Vec<(String, String)> {
    (0..3)
        .map(|k| {
            (
                "contoso.com".to_string(),
                format!("loc{}.contoso.com", (i * 7 + k * 31) % 100),
            )
        })
        .collect()
}

/// ns per `record` of `N` messages on each of `threads` threads.
fn per_record(threads: usize) -> f64 {
    let msgs: Vec<Vec<(String, String)>> = (0..1000).map(pairs).collect();
    let msgs = std::sync::Arc::new(msgs);
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let m = msgs.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    history::record(black_box(&m[i % m.len()]), 4096);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() {
    let dir = std::env::temp_dir().join(format!("sluice-bench-history-{}", std::process::id()));
    history::start(
        &dir,
        &["loc0.contoso.com".to_string()],
        Duration::from_secs(3600),
    )
    .expect("history");
    // warm: every destination present
    for i in 0..1000 {
        history::record(&pairs(i), 4096);
    }
    println!("history::record, 3 recipients over 100 destinations:");
    for t in [1, 2] {
        let ns = per_record(t);
        println!("  {t} thread(s): {ns:.0} ns per message per thread");
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        history::record(&pairs(1), 4096);
        let s = Instant::now();
        history::flush();
        best = best.min(s.elapsed());
    }
    let file = std::fs::read_dir(dir.join(history::DIR))
        .expect("dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".day"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0));
    println!(
        "history::flush of the day ({} octets): {:.2} ms (best of 5, fsync included)",
        file.unwrap_or(0),
        best.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
