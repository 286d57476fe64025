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
//! * `record`: the per-record deadline (a slow drip does not keep a session);
//! * [`edge`]: the Edge agents' daemon-wide state: DNS list lookups and
//!   their cache, per-client rate limits, protocol analysis' scores;
//! * `hybrid`: the cross-premises agents' counters, and the check that
//!   the config declares the policy's client certificates (SIGHUP).

mod daemon;
pub mod edge;
mod hybrid;
mod listen;
mod received;
mod record;
mod session;
mod starttls;

pub use daemon::run;
