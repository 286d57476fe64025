//! Read deadlines kept by one ticking check: the command and data
//! timeouts of inbound sessions, and the reply timeouts of outbound ones.
//!
//! A session waits for its peer with a deadline (RFC 5321 §4.5.3.2). An
//! async-io `Timer` per read would do, but inserting a timer wakes the
//! reactor thread every time (async-io notifies it so that it recomputes its
//! sleep), and a session waits once per command or reply: a context switch
//! per command on a loaded relay. Here a session only stores when its wait
//! ends (an atomic), and one task checks all of them a few times a second
//! and wakes those whose time has passed. The price is resolution: a
//! deadline fires up to one tick late, and the tick is a small part of the
//! shortest timeout ([`Deadlines::tick`]).

use atomic_waker::AtomicWaker;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

/// No deadline armed.
const NONE: u64 = u64::MAX;

/// The longest tick: a deadline fires at most this late.
const TICK_MAX: Duration = Duration::from_secs(1);
/// The shortest tick, however short the timeouts (tests use seconds).
const TICK_MIN: Duration = Duration::from_millis(50);
/// A tick is at most this part of the shortest timeout.
const TICK_DIVISOR: u32 = 8;

/// Every session's deadline, for the task that checks them.
pub struct Deadlines {
    epoch: Instant,
    list: Mutex<Vec<Weak<Deadline>>>,
}

/// One session's deadline: when its current wait ends, and the wake-up.
pub struct Deadline {
    epoch: Instant,
    /// Milliseconds after `epoch`, or [`NONE`].
    at: AtomicU64,
    /// The task waiting in [`Deadline::expired`] (a few octets a session).
    waker: AtomicWaker,
}

impl Deadlines {
    /// An empty set; its clock starts now.
    pub fn new() -> Deadlines {
        Deadlines {
            epoch: Instant::now(),
            list: Mutex::new(Vec::new()),
        }
    }

    /// A deadline for a new session, unarmed; it leaves the set when dropped.
    pub fn register(&self) -> Arc<Deadline> {
        let d = Arc::new(Deadline {
            epoch: self.epoch,
            at: AtomicU64::new(NONE),
            waker: AtomicWaker::new(),
        });
        if let Ok(mut l) = self.list.lock() {
            l.push(Arc::downgrade(&d));
        }
        d
    }

    /// How often to check so that no timeout fires much late: an eighth of
    /// the shortest timeout, between 50 ms and 1 s.
    pub fn tick(shortest: Duration) -> Duration {
        (shortest / TICK_DIVISOR).clamp(TICK_MIN, TICK_MAX)
    }

    /// Wakes every session whose deadline has passed and forgets the
    /// sessions that ended. Returns how many were woken.
    pub fn check(&self) -> usize {
        let now = millis(self.epoch, Instant::now());
        let mut woken = 0;
        if let Ok(mut l) = self.list.lock() {
            l.retain(|w| match w.upgrade() {
                Some(d) => {
                    if d.at.load(Ordering::Acquire) <= now {
                        d.waker.wake();
                        woken += 1;
                    }
                    true
                }
                None => false,
            });
        }
        woken
    }

    /// Checks the deadlines forever, every [`Deadlines::tick`] of the
    /// shortest timeout that `shortest` gives at the time (it follows a
    /// reloaded config), and calls `also` at each tick (another set's
    /// check: the deliveries' reply deadlines).
    pub async fn keep(&self, shortest: impl Fn() -> Duration, also: impl Fn()) {
        loop {
            async_io::Timer::after(Deadlines::tick(shortest())).await;
            self.check();
            also();
        }
    }

    /// Sessions registered and not yet dropped (pruned at each check).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.lock().map_or(0, |l| l.len())
    }
}

impl Deadline {
    /// The current wait ends `after` from now.
    pub fn arm(&self, after: Duration) {
        let at = millis(self.epoch, Instant::now())
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(NONE));
        self.at.store(at.min(NONE - 1), Ordering::Release);
    }

    /// No wait in progress.
    pub fn disarm(&self) {
        self.at.store(NONE, Ordering::Release);
    }

    fn passed(&self) -> bool {
        self.at.load(Ordering::Acquire) <= millis(self.epoch, Instant::now())
    }

    /// Resolves once the armed deadline has passed (a wake-up for an
    /// earlier wait finds it not passed and waits on).
    pub async fn expired(&self) {
        futures_lite::future::poll_fn(|cx| {
            // Registered before the check, so a check in between is not missed.
            self.waker.register(cx.waker());
            if self.passed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines::new()
    }
}

fn millis(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_millis()).unwrap_or(NONE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn a_deadline_fires_after_its_time_and_not_before() {
        let set = Deadlines::new();
        let d = set.register();
        d.arm(Duration::from_millis(200));
        assert_eq!(set.check(), 0, "nothing has passed yet");
        // Not expired: polling once leaves it pending.
        assert!(future::block_on(future::poll_once(d.expired())).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(set.check(), 1);
        assert!(future::block_on(future::poll_once(d.expired())).is_some());
    }

    #[test]
    fn a_stale_wake_up_does_not_end_the_next_wait() {
        let set = Deadlines::new();
        let d = set.register();
        d.arm(Duration::ZERO);
        assert_eq!(set.check(), 1); // a wake-up for the earlier wait
        d.arm(Duration::from_secs(60)); // the next wait
        assert!(future::block_on(future::poll_once(d.expired())).is_none());
        d.disarm();
        assert_eq!(set.check(), 0, "a disarmed deadline never fires");
    }

    #[test]
    fn the_checker_wakes_a_waiting_task() {
        let set = Arc::new(Deadlines::new());
        let d = set.register();
        // The clock starts before arming: the deadline counts from `arm`,
        // so a wait measured from a later instant may be shorter.
        let t0 = Instant::now();
        d.arm(Duration::from_millis(100));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checker = {
            let (set, done) = (set.clone(), done.clone());
            std::thread::spawn(move || {
                // Until the waiter has woken, however slow the machine.
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(25));
                    set.check();
                }
            })
        };
        future::block_on(d.expired());
        let waited = t0.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        let _ = checker.join();
    }

    #[test]
    fn the_keeper_wakes_its_own_set_and_checks_the_other_at_each_tick() {
        let inbound = Deadlines::new();
        let replies = Deadlines::new();
        let (a, b) = (inbound.register(), replies.register());
        // Not passed at the first poll: only a check can wake them.
        a.arm(Duration::from_millis(60));
        b.arm(Duration::from_millis(60));
        let keeper = async {
            inbound
                .keep(
                    || Duration::from_millis(1), // the shortest tick, 50 ms
                    || {
                        replies.check();
                    },
                )
                .await;
            false
        };
        let both = async {
            a.expired().await;
            b.expired().await;
            true
        };
        // A bound so that a keeper that never checks fails, not hangs.
        let bound = async {
            async_io::Timer::after(Duration::from_secs(60)).await;
            false
        };
        assert!(future::block_on(future::or(
            future::or(both, keeper),
            bound
        )));
    }

    #[test]
    fn ended_sessions_leave_the_set() {
        let set = Deadlines::new();
        let a = set.register();
        let b = set.register();
        drop(a);
        set.check();
        assert_eq!(set.len(), 1);
        drop(b);
        set.check();
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn the_tick_is_a_small_part_of_the_shortest_timeout() {
        assert_eq!(Deadlines::tick(Duration::from_secs(300)), TICK_MAX);
        assert_eq!(
            Deadlines::tick(Duration::from_secs(2)),
            Duration::from_millis(250)
        );
        assert_eq!(Deadlines::tick(Duration::from_millis(10)), TICK_MIN);
    }
}
