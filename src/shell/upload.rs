//! Serial-line rule upload. PLACEHOLDER with the agreed signatures only:
//! the implementation is being written (it replaces this file).

use std::path::Path;

/// Installs a rule file's text; `via` says how it came. Ok: a report; Err: the errors.
pub type ApplyFn = std::sync::Arc<dyn Fn(&str, &str) -> Result<String, String> + Send + Sync>;

/// Daemon side (not yet implemented: fails at once).
pub fn serve_serial(dev: &Path, _baud: u32, _apply: ApplyFn) -> std::io::Result<()> {
    Err(std::io::Error::other(format!(
        "{}: serial upload is not built yet",
        dev.display()
    )))
}

/// Operator side (not yet implemented: exit 2).
pub fn send_command(dev: &Path, _baud: u32, _file: &Path) -> i32 {
    eprintln!("sluice: {}: serial upload is not built yet", dev.display());
    2
}
