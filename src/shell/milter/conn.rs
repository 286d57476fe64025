//! One connection to a milter: connect and negotiate within the connect
//! timeout, packets out (queued, written before each read), packets in
//! within a timeout. Every failure is a [`Failure`] the caller turns into
//! the milter's `on_failure`.

use crate::engine::milter::{
    act, parse, proto, Command, MacroLists, MilterError, Negotiated, Response, Stage,
};
use crate::shell::config::{MilterAddress, MilterConfig};
use async_net::unix::UnixStream;
use async_net::TcpStream;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use std::fmt;
use std::time::Duration;

/// Octets read from a milter at a time.
const READ: usize = 16 * 1024;

/// Why talking to a milter failed.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be made.
    Connect(String),
    /// No answer within the timeout, at this stage.
    Timeout(Stage),
    /// The milter closed the connection, at this stage.
    Closed(Stage),
    /// A read or write failed.
    Io(String),
    /// The milter broke the protocol.
    Protocol(MilterError),
    /// A replaced body passed the message size limit.
    TooLarge,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Timeout(st) => write!(f, "no answer at {} within the timeout", st.name()),
            Failure::Closed(st) => write!(f, "closed the connection at {}", st.name()),
            Failure::Io(e) => write!(f, "i/o error: {e}"),
            Failure::Protocol(e) => write!(f, "protocol error: {e}"),
            Failure::TooLarge => f.write_str("replaced body over the message size limit"),
        }
    }
}

/// The socket.
enum Stream {
    /// `inet:`.
    Tcp(TcpStream),
    /// `unix:`.
    Unix(UnixStream),
}

/// A negotiated connection.
pub struct Conn {
    /// The socket.
    stream: Stream,
    /// Octets read: `buf[start..end]` not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Packets queued for the next write.
    out: Vec<u8>,
    /// What negotiation agreed.
    pub neg: Negotiated,
    /// The milter's own macro lists, per macro stage index.
    pub lists: Vec<Option<Vec<String>>>,
    /// The stage the last event was for (for errors).
    pub stage: Stage,
}

/// Runs `fut` within `t`; `Timeout(stage)` otherwise.
async fn within<T>(
    t: Duration,
    stage: Stage,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    future::or(fut, async {
        async_io::Timer::after(t).await;
        Err(Failure::Timeout(stage))
    })
    .await
}

impl Conn {
    /// Connects to `cfg`'s address and negotiates, all within its
    /// connect timeout.
    pub async fn open(cfg: &MilterConfig) -> Result<Conn, Failure> {
        within(cfg.connect_timeout, Stage::Negotiate, async {
            let stream = match &cfg.address {
                MilterAddress::Inet(h, p) => {
                    let s = TcpStream::connect((h.as_str(), *p))
                        .await
                        .map_err(|e| Failure::Connect(e.to_string()))?;
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }
                MilterAddress::Unix(p) => Stream::Unix(
                    UnixStream::connect(p)
                        .await
                        .map_err(|e| Failure::Connect(e.to_string()))?,
                ),
            };
            let mut c = Conn {
                stream,
                buf: vec![0; READ],
                start: 0,
                end: 0,
                out: Vec::new(),
                neg: Negotiated {
                    version: cfg.protocol,
                    actions: 0,
                    protocol: 0,
                },
                lists: vec![None; crate::engine::limits::MILTER_MACRO_STAGES],
                stage: Stage::Negotiate,
            };
            c.negotiate(cfg.protocol).await?;
            Ok(c)
        })
        .await
    }

    /// Option negotiation: offers every action and protocol step sluice
    /// can honour, checks the answer, keeps the milter's macro lists.
    async fn negotiate(&mut self, version: u32) -> Result<(), Failure> {
        let offer = Command::Negotiate {
            version,
            actions: act::ALL,
            protocol: proto::OFFERED,
        };
        self.queue(&offer)?;
        self.flush().await?;
        let (neg, lists) = match self.read_packet().await? {
            Response::Negotiate(n, l) => (n, owned_lists(&l)),
            _ => {
                return Err(Failure::Protocol(MilterError::Unexpected(
                    b'?',
                    Stage::Negotiate,
                )))
            }
        };
        self.neg = neg
            .check(act::ALL, proto::OFFERED)
            .map_err(Failure::Protocol)?;
        self.lists = lists;
        Ok(())
    }

    /// Queues a packet for the next write.
    pub fn queue(&mut self, c: &Command<'_>) -> Result<(), Failure> {
        let at = self.out.len();
        crate::shell::buf::set_len_zeroed(&mut self.out, at + c.encoded_len());
        let n = c.encode(&mut self.out[at..]).map_err(Failure::Protocol)?;
        self.out.truncate(at + n);
        Ok(())
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), Failure> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&self.out).await,
            Stream::Unix(s) => s.write_all(&self.out).await,
        };
        self.out.clear();
        r.map_err(|e| Failure::Io(e.to_string()))
    }

    /// Writes what is queued and reads the next packet within `t`.
    pub async fn answer(&mut self, t: Duration) -> Result<Response<'_>, Failure> {
        let stage = self.stage;
        within(t, stage, self.flush()).await?;
        // The timeout covers the read; the borrow of the buffer is
        // returned after it.
        let ready = within(t, stage, self.fill()).await?;
        self.take(ready)
    }

    /// Reads until a whole packet is buffered; returns its length.
    async fn fill(&mut self) -> Result<usize, Failure> {
        loop {
            match parse(&self.buf[self.start..self.end]) {
                Ok(Some((_, n))) => return Ok(n),
                Ok(None) => {}
                Err(e) => return Err(Failure::Protocol(e)),
            }
            self.make_room()?;
            let dst = &mut self.buf[self.end..];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(dst).await,
                Stream::Unix(s) => s.read(dst).await,
            }
            .map_err(|e| Failure::Io(e.to_string()))?;
            if n == 0 {
                return Err(Failure::Closed(self.stage));
            }
            self.end += n;
        }
    }

    /// Moves unread octets to the front, and grows the buffer for a
    /// packet longer than it (the length was checked against the limit).
    fn make_room(&mut self) -> Result<(), Failure> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let want = self.buf.len() * 2;
            if want > 2 * crate::engine::limits::MAX_MILTER_PACKET {
                return Err(Failure::Protocol(MilterError::TooLong(want as u32)));
            }
            crate::shell::buf::set_len_zeroed(&mut self.buf, want);
        }
        Ok(())
    }

    /// The packet of `len` octets at the front, consumed.
    fn take(&mut self, len: usize) -> Result<Response<'_>, Failure> {
        let at = self.start;
        self.start += len;
        match parse(&self.buf[at..at + len]) {
            Ok(Some((r, _))) => Ok(r),
            Ok(None) => Err(Failure::Closed(self.stage)),
            Err(e) => Err(Failure::Protocol(e)),
        }
    }

    /// Reads one packet with no timeout of its own (negotiation runs
    /// inside the connect timeout).
    async fn read_packet(&mut self) -> Result<Response<'_>, Failure> {
        self.flush().await?;
        let n = self.fill().await?;
        self.take(n)
    }

    /// Says goodbye (no answer is read); errors are of no interest.
    pub async fn quit(mut self) {
        if self.queue(&Command::Quit).is_ok() {
            let _ = future::or(self.flush(), async {
                async_io::Timer::after(Duration::from_secs(1)).await;
                Ok(())
            })
            .await;
        }
    }

    /// Ends this milter session so that the socket can carry the next
    /// (`QUIT_NC`): only after a conversation reached end of message.
    pub fn reset(&mut self) -> Result<(), Failure> {
        self.queue(&Command::QuitNewConnection)?;
        self.stage = Stage::Negotiate;
        Ok(())
    }

    /// Whether the milter left unread octets (a pooled connection must
    /// have none).
    pub fn is_clean(&self) -> bool {
        self.start == self.end && self.out.len() <= 5
    }
}

/// The macro lists a milter asked for, owned, split into names.
fn owned_lists(l: &MacroLists<'_>) -> Vec<Option<Vec<String>>> {
    l.lists
        .iter()
        .map(|x| {
            x.map(|names| {
                String::from_utf8_lossy(names)
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        })
        .collect()
}
