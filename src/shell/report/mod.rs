//! The mail-flow report: the arithmetic of MX layouts ([`mx`]), i.e. which
//! share of mail, and how many bytes, each layout of MX records would
//! redirect between locations. The daemon's daily history and the
//! `sluice report` command are to build on it; neither exists yet.
pub mod mx;
