//! Directory benchmark: a table of 200,000 addresses built from a generated
//! CSV export (100,000 users, each a primary `SMTP:` address and a
//! secondary `smtp:` one, as seed 001's rewrite objects have), then
//! lookups of hits (secondaries, which return their primary, and primaries)
//! and misses (unknown addresses of the same domains), in random order.
//!
//! Run: `cargo bench --bench directory`. Prints ns per lookup, the table's
//! octets per address (its exact size divided by the address count) and
//! the process's resident memory growth when the built table is loaded the
//! way the daemon loads it (read from its octets and kept).
use sluice::shell::directory::Directory;
use std::hint::black_box;
use std::time::Instant;

/// Users of the generated export (two addresses each).
const USERS: usize = 100_000;
/// Lookups timed per kind.
const LOOKUPS: usize = 2_000_000;

/// The process's resident set (VmRSS) in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A small deterministic generator (xorshift) for the lookup order.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Times `LOOKUPS` lookups cycling through `addrs`; ns per lookup and how
/// many were found.
fn time(d: &Directory, addrs: &[Vec<u8>]) -> (f64, usize) {
    let mut found = 0usize;
    let start = Instant::now();
    for i in 0..LOOKUPS {
        let a = &addrs[i % addrs.len()];
        if let Some(h) = black_box(d.lookup(black_box(a))) {
            found += 1 + h.primary.map_or(0, |p| p.len() & 1);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    (ns, found)
}

/// Set to a table file: the process only loads it and prints its VmRSS
/// growth in KiB.
const LOAD: &str = "SLUICE_BENCH_DIRECTORY_LOAD";

fn main() {
    if let Some(file) = std::env::var_os(LOAD) {
        let before = rss_kib();
        let d = Directory::from_blob(std::fs::read(file).expect("read")).expect("loads");
        let after = rss_kib();
        black_box(d.lookup(b"x@y"));
        println!("{}", after.saturating_sub(before));
        return;
    }
    let mut csv = String::from("mail,proxyAddresses\n");
    for i in 0..USERS {
        let site = ["eu", "us", "apac"][i % 3];
        csv.push_str(&format!(
            "user{i}@{site}.contoso.com,\"SMTP:user{i}@{site}.contoso.com;smtp:user{i}@contoso.com\"\n"
        ));
    }
    let t = Instant::now();
    let built = Directory::from_export(&csv).expect("the export builds");
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(csv);
    let n = built.addresses();
    assert_eq!(n, 2 * USERS);
    // What the daemon holds: the table written as an install writes it,
    // then read back from the file and kept, as the daemon loads it.
    let file =
        std::env::temp_dir().join(format!("sluice-bench-directory-{}.bin", std::process::id()));
    std::fs::write(&file, built.bytes()).expect("write the table");
    drop(built);
    // In a fresh process, so that memory the build freed is not reused.
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(LOAD, &file)
        .output()
        .expect("run the loader");
    let grew: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("KiB");
    let d = Directory::from_blob(std::fs::read(&file).expect("read")).expect("the table loads");
    let _ = std::fs::remove_file(&file);
    let bytes = d.bytes().len();

    let mut secondaries: Vec<Vec<u8>> = (0..USERS)
        .map(|i| format!("User{i}@Contoso.com").into_bytes())
        .collect();
    let mut primaries: Vec<Vec<u8>> = (0..USERS)
        .map(|i| format!("user{i}@{}.contoso.com", ["eu", "us", "apac"][i % 3]).into_bytes())
        .collect();
    let mut misses: Vec<Vec<u8>> = (0..USERS)
        .map(|i| format!("user{}@contoso.com", USERS + i).into_bytes())
        .collect();
    shuffle(&mut secondaries, 0x9e37_79b9_7f4a_7c15);
    shuffle(&mut primaries, 0xdead_beef_cafe_f00d);
    shuffle(&mut misses, 0x0123_4567_89ab_cdef);

    let (sec_ns, sec_found) = time(&d, &secondaries);
    let (pri_ns, pri_found) = time(&d, &primaries);
    let (miss_ns, miss_found) = time(&d, &misses);
    assert!(sec_found >= LOOKUPS && pri_found == LOOKUPS && miss_found == 0);

    println!(
        "directory: {n} addresses of {} entries (built from CSV in {build_ms:.0} ms)",
        d.entries()
    );
    println!(
        "table: {bytes} octets = {:.1} octets/address (12 per address + the pool of primaries)",
        bytes as f64 / n as f64
    );
    println!(
        "resident memory of the loaded table: +{grew} KiB = {:.1} octets/address (VmRSS before/after loading, fresh process)",
        (grew * 1024) as f64 / n as f64
    );
    println!("lookup, hit (secondary -> primary): {sec_ns:.0} ns");
    println!("lookup, hit (primary):              {pri_ns:.0} ns");
    println!("lookup, miss:                       {miss_ns:.0} ns");
}
