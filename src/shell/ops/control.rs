//! The daemon's control side: the requests `sluice` commands send over the
//! control socket (policy install and rollback, status, the queue), and the
//! serial upload listener, which installs what it receives as `rules apply`
//! does.

use crate::shell::policy::install::{self, Installer};
use crate::shell::relay::queue::Queue;
use crate::shell::spool;
use std::path::PathBuf;
use std::sync::Arc;

/// The control socket's requests: policy commands (install) and queue
/// commands (`queue_state`, `queue_flush`, `queue_retry`, `queue_delete`
/// with an `id`).
pub fn control_handler(inst: Arc<Installer>, queue: Arc<Queue>) -> install::Handler {
    use serde_json::json;
    Arc::new(move |req: &serde_json::Value| {
        let id = req["id"].as_str().and_then(spool::parse_id);
        match (req["cmd"].as_str(), id) {
            (Some("queue_state"), _) => queue.inspect(),
            (Some("queue_flush"), _) => {
                queue.flush();
                json!({ "ok": true, "queued": queue.len() })
            }
            (Some("queue_retry"), Some(id)) => match queue.retry(id) {
                true => json!({ "ok": true }),
                false => json!({ "ok": false, "errors": ["no such message in the queue"] }),
            },
            (Some("queue_delete"), Some(id)) => match smol::block_on(queue.delete(id)) {
                Ok(true) => json!({ "ok": true }),
                Ok(false) => {
                    json!({ "ok": false, "errors": ["no such message in the queue, or it is being delivered"] })
                }
                Err(e) => json!({ "ok": false, "errors": [e] }),
            },
            (Some("queue_retry" | "queue_delete"), None) => {
                json!({ "ok": false, "errors": ["a queue id is needed"] })
            }
            _ => install::handle(&inst, req),
        }
    })
}

/// Starts the serial upload listener: uploads are applied as `rules apply`.
pub fn serve_uploads(dev: PathBuf, baud: u32, inst: Arc<Installer>) -> Result<(), String> {
    let apply: crate::shell::ops::upload::ApplyFn = Arc::new(
        move |text: &str, via: &str| match inst.apply_text(text, via) {
            Ok(a) => Ok(format!(
                "installed policy version {:016X}{}",
                a.version,
                a.warnings
                    .iter()
                    .map(|w| format!("\n{w}"))
                    .collect::<String>()
            )),
            Err(errs) => Err(errs.join("\n")),
        },
    );
    std::thread::Builder::new()
        .name("serial-upload".into())
        .spawn(move || {
            if let Err(e) = crate::shell::ops::upload::serve_serial(&dev, baud, apply) {
                crate::shell::ops::log::warn(format_args!(
                    "serial upload on {}: {e}",
                    dev.display()
                ));
            }
        })
        .map(|_| ())
        .map_err(|e| format!("serial upload thread: {e}"))
}
