//! Operator log lines. For now on stderr, one line per event, with the
//! event name (RECEIVE, REJECT, ...) first so a message can be followed
//! with grep; syslog (RFC 5424) is the appliance-operations issue's.

use std::fmt::Arguments;
use std::io::Write;

fn line(level: &str, args: Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "sluice[{}]: {level}{args}", std::process::id());
}

/// An ordinary event.
pub fn info(args: Arguments<'_>) {
    line("", args);
}

/// Something an operator should look at.
pub fn warn(args: Arguments<'_>) {
    line("warning: ", args);
}
