//! The std shell: sockets, disk, TLS, timers and the command line around
//! the engine.
//!
//! The folders follow a message and then the operator:
//! * [`smtpd`] receives it (listeners, sessions, STARTTLS, deadlines);
//! * [`policy`] decides what happens to it (rule-file compiler, install,
//!   runtime, trace);
//! * [`spool`] keeps it durable;
//! * [`relay`] hands it on (queue, delivery, DNS, bounces);
//! * [`ops`] is the operator's side of the running daemon (control socket,
//!   serial upload, syslog), [`cli`] the command line.
//!
//! [`directory`] is the installed recipient directory (valid recipients and
//! the inbound rewrite map), which `smtpd` and `policy` read.
//! [`buf`], [`config`], [`deadline`], [`reply`], [`tls`] and [`time`] serve
//! them all.
#![deny(clippy::unwrap_used, clippy::expect_used)]

/// `print!` for the commands' standard output: through one locked handle,
/// and a reader that went away (`sluice trace ... | head`) is no panic
/// (see [`cli::out`]).
macro_rules! out {
    ($($t:tt)*) => {
        $crate::shell::cli::out(format_args!($($t)*))
    };
}

/// `println!` for the commands' standard output, like [`out!`].
macro_rules! outln {
    () => {
        $crate::shell::cli::out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::shell::cli::out(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub mod auth;
pub mod buf;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod directory;
#[doc(hidden)]
pub mod fuzz;
pub mod milter;
pub mod ops;
pub mod policy;
pub mod relay;
pub mod reply;
pub mod report;
pub mod sender_auth;
pub mod smtpd;
pub mod spool;
pub mod time;
pub mod tls;

/// Runs `futs` at the same time, their outputs in order: the few DNS
/// lookups of one check (DNS lists, a message's DKIM keys) on the
/// session's task, without spawning.
pub(crate) async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::join_all;
    use std::cell::Cell;

    /// The first future waits for the last one: run one after the other
    /// they would never end; together they do, outputs in order.
    #[test]
    fn join_all_runs_the_lookups_together() {
        let flag = Cell::new(false);
        let waiter = |n: u32| {
            let flag = &flag;
            async move {
                while !flag.get() {
                    futures_lite::future::yield_now().await;
                }
                n
            }
        };
        let setter = |n: u32| {
            let flag = &flag;
            async move {
                flag.set(true);
                n
            }
        };
        let futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = u32> + '_>>> = vec![
            Box::pin(waiter(1)),
            Box::pin(waiter(2)),
            Box::pin(setter(3)),
        ];
        let out = futures_lite::future::block_on(join_all(futs));
        assert_eq!(out, [1, 2, 3]);
    }
}
