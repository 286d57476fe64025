//! `sluice auth`: make a passwd-file line (`auth passwd`), check a passwd
//! file (`auth check`), and time one password check (`auth bench`, the
//! figure behind the default argon2id cost).

use crate::shell::auth::{self, Passwd, Scheme};
use std::io::{BufRead, Write};
use std::time::Instant;

/// `sluice auth ...`; the exit status.
pub(super) fn command(args: &[&str]) -> i32 {
    match args {
        ["passwd", rest @ ..] => passwd(rest),
        ["check", file] => check(file),
        ["bench", rest @ ..] => bench(rest),
        _ => {
            eprintln!(
                "usage: sluice auth passwd [--scheme SHA512-CRYPT|BLF-CRYPT|ARGON2ID] [--user NAME]\n\
                 \x20      sluice auth check FILE\n\
                 \x20      sluice auth bench [--scheme S] [--count N] [--m-kib K --t T]"
            );
            2
        }
    }
}

/// The value after `--name` in `args`, if any.
fn opt<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

/// `--scheme S` (default ARGON2ID).
fn scheme(args: &[&str]) -> Result<Scheme, String> {
    match opt(args, "--scheme") {
        None => Ok(Scheme::Argon2id),
        Some(s) => Scheme::from_name(s).ok_or_else(|| {
            format!("unknown scheme {s:?}: expected SHA512-CRYPT, BLF-CRYPT or ARGON2ID")
        }),
    }
}

/// `auth passwd`: reads a password (twice, without echo, from a terminal;
/// one line from a pipe) and prints `{SCHEME}hash`, or `USER:{SCHEME}hash`
/// with `--user`.
fn passwd(args: &[&str]) -> i32 {
    let scheme = match scheme(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    let secret = match read_password() {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            eprintln!("sluice: empty password");
            return 1;
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            return 1;
        }
    };
    match auth::hash(scheme, secret.as_bytes()) {
        Ok(h) => {
            match opt(args, "--user") {
                Some(u) => outln!("{u}:{h}"),
                None => outln!("{h}"),
            }
            0
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            1
        }
    }
}

/// The password: from a terminal, prompted twice on standard error with
/// echo off; otherwise the first line of standard input.
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if !rustix::termios::isatty(&stdin) {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = prompt("Password: ")?;
    let again = prompt("Retype password: ")?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

/// One line from the terminal with echo off (restored afterwards).
fn prompt(text: &str) -> Result<String, String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|e| e.to_string())?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(|e| e.to_string())?;
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `auth check FILE`: the number of users, or the first bad line as
/// `FILE:LINE:COL: message` (exit 1).
fn check(file: &str) -> i32 {
    match Passwd::load(std::path::Path::new(file)) {
        Ok(p) => {
            outln!("{file}: {} users", p.len());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `auth bench`: hashes a password with the default cost of the scheme
/// (for ARGON2ID, `--m-kib` and `--t` try another), then times `--count`
/// checks of it (default 10): the fastest, the median and the slowest, in
/// milliseconds.
fn bench(args: &[&str]) -> i32 {
    let scheme = match scheme(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    let count: usize = opt(args, "--count")
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
        .max(1);
    let m_kib = opt(args, "--m-kib").and_then(|n| n.parse().ok());
    let t = opt(args, "--t").and_then(|n| n.parse().ok());
    let made = match (scheme, m_kib, t) {
        (Scheme::Argon2id, Some(_), _) | (Scheme::Argon2id, _, Some(_)) => auth::hash_argon2(
            b"correct horse battery staple",
            m_kib.unwrap_or(auth::ARGON2_M_KIB),
            t.unwrap_or(auth::ARGON2_T),
        ),
        _ => auth::hash(scheme, b"correct horse battery staple"),
    };
    let line = match made {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 1;
        }
    };
    let hash = line.split_once('}').map_or(line.as_str(), |(_, h)| h);
    let mut ms: Vec<f64> = Vec::with_capacity(count);
    let mut cpu: Vec<f64> = Vec::with_capacity(count);
    for _ in 0..count {
        let (t, c) = (Instant::now(), cpu_ms());
        let ok = auth::verify(scheme, hash, b"correct horse battery staple");
        cpu.push(cpu_ms() - c);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !ok {
            eprintln!("sluice: the check failed");
            return 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    let cpu_median = cpu.get(cpu.len() / 2).copied().unwrap_or(0.0);
    let cost = match scheme {
        // The hash's own PHC parameters: what was really timed.
        Scheme::Argon2id => hash
            .split('$')
            .nth(3)
            .map_or_else(|| params(scheme), |p| format!("({p})")),
        _ => params(scheme),
    };
    outln!(
        "{} {cost}: {count} checks, min {:.1} ms, median {median:.1} ms, max {:.1} ms \
         (CPU time: median {cpu_median:.1} ms)",
        scheme.name(),
        ms.first().copied().unwrap_or(0.0),
        ms.last().copied().unwrap_or(0.0)
    );
    0
}

/// This thread's CPU time in milliseconds: unlike the wall clock, not
/// stretched when other processes share the cores.
fn cpu_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1000.0 + t.tv_nsec as f64 / 1e6
}

/// The cost parameters new hashes of `scheme` get.
fn params(scheme: Scheme) -> String {
    match scheme {
        Scheme::Argon2id => format!(
            "(m={} KiB, t={}, p={})",
            auth::ARGON2_M_KIB,
            auth::ARGON2_T,
            auth::ARGON2_P
        ),
        Scheme::BlfCrypt => format!("(cost {})", auth::BCRYPT_COST),
        Scheme::Sha512Crypt => "(5000 rounds)".into(),
    }
}
