//! The mail-flow report (seed 001: "analyze existing mail-flow patterns to
//! determine incoming email's ultimate destination, then appropriately
//! configure and set costs on MX records"):
//! * [`history`]: the daemon's daily counts per recipient domain and
//!   location, kept in the state directory;
//! * [`logs`]: the same counts from syslog files of several relays;
//! * [`mx`]: the arithmetic of MX layouts, [`plan`]: the table, the
//!   layouts and the recommendation;
//! * [`command`]: `sluice report`, [`html`]: its `--html` page.
pub mod command;
pub mod history;
pub mod html;
pub mod logs;
pub mod mx;
pub mod plan;
