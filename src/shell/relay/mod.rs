//! Handing accepted mail on: the [`queue`] schedules each recipient,
//! [`deliver`] makes one attempt at a next hop found through [`dns`], with
//! the policy's header edits put in by [`splice`], and [`dsn`] writes the
//! bounce for what failed; [`failure`] is the table of sluice's own
//! delivery failures and their replies. [`pool`] keeps outbound sessions
//! open between deliveries to the same next hop.

pub mod deliver;
pub mod dns;
pub mod dsn;
pub mod failure;
pub mod pool;
pub mod queue;
pub mod splice;
pub mod verify;
