//! Receiving mail: `sluice run`'s listeners and sessions.
//!
//! * [`daemon`]: start-up, the executor threads, SIGHUP reload, the drain;
//! * `listen`: listening sockets, admission (connection limits), the
//!   accept loops;
//! * `session`: one SMTP session around the engine's receiver; a message
//!   is answered `250` only after the spool has synced it;
//! * `starttls`: the connection, plain or TLS, and the handshake with
//!   attribution by client certificate;
//! * `received`: our `Received:` field;
//! * [`deadline`]: the command and data timeouts of every session;
//! * [`edge`]: the Edge agents' daemon-wide state: DNS list lookups and
//!   their cache, per-client rate limits, protocol analysis' scores.

mod daemon;
pub mod deadline;
pub mod edge;
mod listen;
mod received;
mod session;
mod starttls;

pub use daemon::run;
