//! The SMTP session machines: the receiver (whole, byte by byte and in
//! random splits must give the same events and replies), its AUTH decoder,
//! and the outbound client fed server replies.

use super::{chunks, take, Dice};
use crate::engine::client::{Client, ClientConfig, Event as CEvent, TlsMode, Transaction};
use crate::engine::reply::Reason;
use crate::engine::smtp::{BareLineEndings, Event, Receiver, ReceiverConfig};

/// One recorded event: message content, or any other event as its
/// `Debug` text.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    /// Message content (consecutive runs merged).
    Body(Vec<u8>),
    /// Any other event.
    Other(String),
}

/// What a session did: its events in order (runs of message content
/// merged, as a split may cut them anywhere) and every octet it sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Transcript {
    /// The events.
    events: Vec<Ev>,
    /// Octets the machine wrote (replies, or the client's commands).
    output: Vec<u8>,
}

impl Transcript {
    /// Appends message content to the run just before it, also across an
    /// end of headers (which says where the body starts by offset, so it
    /// may come after more content when the input is not split there).
    fn body(&mut self, bytes: &[u8]) {
        let n = self.events.len();
        let eoh = |e: &Ev| matches!(e, Ev::Other(t) if t.starts_with("EndOfHeaders"));
        let at = match self.events.as_slice() {
            [.., Ev::Body(_)] => n - 1,
            [.., Ev::Body(_), e] if eoh(e) => n - 2,
            _ => {
                self.events.push(Ev::Body(Vec::new()));
                n
            }
        };
        if let Some(Ev::Body(run)) = self.events.get_mut(at) {
            run.extend_from_slice(bytes);
        }
    }

    /// Appends an event other than content.
    fn push(&mut self, text: String) {
        self.events.push(Ev::Other(text));
    }

    /// The last event's text, if it is not content.
    fn last(&self) -> Option<&str> {
        match self.events.last() {
            Some(Ev::Other(t)) => Some(t),
            _ => None,
        }
    }
}

/// Panics, readably, if two runs of one session differ: the first event
/// that differs, or both outputs.
fn same(a: &Transcript, b: &Transcript, how: &str) {
    if let Some(i) =
        (0..a.events.len().max(b.events.len())).find(|&i| a.events.get(i) != b.events.get(i))
    {
        let show = |e: Option<&Ev>| match e {
            Some(Ev::Body(b)) => format!("Body {:?}", b.escape_ascii().to_string()),
            Some(Ev::Other(t)) => t.clone(),
            None => "(none)".into(),
        };
        panic!(
            "{how}: event {i} differs: {} / {}",
            show(a.events.get(i)),
            show(b.events.get(i))
        );
    }
    if a.output != b.output {
        panic!(
            "{how}: output differs:\n{}\n/\n{}",
            a.output.escape_ascii(),
            b.output.escape_ascii()
        );
    }
}

/// The receiver's settings, chosen by the input's first octet.
fn receiver_config(flags: u8) -> ReceiverConfig<'static> {
    let bit = |n: u8| flags & (1 << n) != 0;
    ReceiverConfig {
        hostname: "mx.example",
        max_message_size: if bit(0) { 300 } else { 10_000_000 },
        max_recipients: if bit(1) { 3 } else { 100 },
        starttls: bit(2),
        tls: bit(3),
        bare_line_endings: if bit(4) {
            BareLineEndings::Normalize
        } else {
            BareLineEndings::Refuse
        },
        auth: bit(5),
        auth_plaintext: bit(6),
    }
}

/// The shell's decision on a pending event (every fifth refused), taken
/// the same way whatever the split.
fn decide(r: &mut Receiver<'_>, kind: &str, n: usize) {
    let refuse = n % 5 == 4;
    match kind {
        "Mail" | "Rcpt" if refuse => r.reject(Reason::AccessDenied.reply()),
        "Mail" | "Rcpt" => r.accept(),
        "MessageEnd" if refuse => r.reject(Reason::InsufficientStorage.reply()),
        "MessageEnd" => r.accept_message("0000000000000001"),
        "Auth" if refuse => r.reject(Reason::AuthFailed.reply()),
        "Auth" => r.auth_accepted(),
        "StartTls" => r.tls_established(),
        _ => {}
    }
}

/// Feeds `reads` to a new receiver as the daemon would and records what it
/// did. Panics if it stalls, consumes more than it was given or loops.
fn run_receiver(flags: u8, reads: &[&[u8]]) -> Transcript {
    let mut r = Receiver::new(receiver_config(flags));
    r.trust_pipelining(true);
    r.greet();
    let mut t = Transcript::default();
    let total: usize = reads.iter().map(|c| c.len()).sum();
    let mut budget = 4 * total + 64;
    let mut content = 0u64;
    for &read in reads.iter().chain([&[][..]].iter()) {
        let last = read.is_empty();
        if last {
            r.connection_lost();
        }
        let mut rest = read;
        loop {
            assert!(budget > 0, "the receiver makes no progress");
            budget -= 1;
            let step = r.feed(rest);
            assert!(step.consumed <= rest.len(), "consumed more than given");
            let moved = step.consumed > 0;
            rest = &rest[step.consumed..];
            let kind = match step.event {
                None => None,
                Some(Event::Body(b)) => {
                    content += b.len() as u64;
                    t.body(b);
                    Some("Body")
                }
                Some(e) => {
                    if let Event::MessageEnd { size } = e {
                        assert_eq!(
                            size, content,
                            "MessageEnd size is not the content handed out"
                        );
                    }
                    if let Event::EndOfHeaders { body_offset } = e {
                        assert!(body_offset <= content, "end of headers before its content");
                    }
                    if matches!(e, Event::DataStart | Event::MessageEnd { .. }) {
                        content = 0;
                    }
                    let text = format!("{e:?}");
                    let kind = text.split(['(', ' ', '{']).next().unwrap_or("").to_string();
                    t.push(text);
                    decide(&mut r, &kind, t.events.len());
                    Some("event")
                }
            };
            // A step that only wrote a reply (the 250 of an empty BDAT
            // chunk) is progress too: the shell feeds again after a flush.
            let wrote = !r.output().is_empty();
            t.output.extend_from_slice(r.output());
            r.output_sent(r.output().len());
            if kind.is_none() && !moved && !wrote {
                assert!(
                    rest.is_empty() || r.is_closed(),
                    "the receiver stalled: {t:?}"
                );
                break;
            }
        }
    }
    assert_eq!(t.last(), Some("Disconnect"));
    t
}

/// Every reply line is a code of three digits, then SP or `-`, ends with
/// CRLF, and a multi-line reply keeps one code.
fn check_replies(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "reply without CRLF"
    );
    let mut open: Option<&[u8]> = None;
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "bare LF in a reply");
        let code = line.get(..3).unwrap_or(b"");
        assert_eq!(code.len(), 3, "short reply line");
        assert!(code.iter().all(u8::is_ascii_digit), "reply code not digits");
        assert!(matches!(line.get(3), Some(b' ' | b'-' | b'\r')));
        if let Some(c) = open {
            assert_eq!(c, code, "code changed inside a multi-line reply");
        }
        open = (line.get(3) == Some(&b'-')).then_some(code);
    }
}

/// The SMTP receiver: `[flags][seed]session`. The session is fed whole,
/// one octet at a time and in random splits; the events (content runs
/// merged) and the replies must be the same, and every reply well formed.
pub fn receiver(data: &[u8]) {
    let ([flags, seed], session) = take::<2>(data);
    let whole = run_receiver(flags, &[session]);
    check_replies(&whole.output);
    if session.len() <= 2048 {
        let bytes: Vec<&[u8]> = session.chunks(1).collect();
        same(&whole, &run_receiver(flags, &bytes), "split into octets");
    }
    let mut dice = Dice::new(&[flags, seed]);
    let max = [3, 17, 200, 2000][usize::from(seed >> 6)];
    let split = chunks(session, &mut dice, max);
    same(&whole, &run_receiver(flags, &split), "random split");
}

/// The AUTH decoder: the input's lines are the answers to AUTH PLAIN or
/// LOGIN (over TLS), checked by [`receiver`]'s whole-versus-split rule.
pub fn auth(data: &[u8]) {
    let ([pick], rest) = take::<1>(data);
    let mech: &[u8] = match pick % 3 {
        0 => b"EHLO c\r\nAUTH PLAIN ",
        1 => b"EHLO c\r\nAUTH PLAIN\r\n",
        _ => b"EHLO c\r\nAUTH LOGIN\r\n",
    };
    let mut session = mech.to_vec();
    session.extend_from_slice(rest);
    session.extend_from_slice(b"\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n");
    let mut framed = vec![0b0110_1000, pick];
    framed.extend_from_slice(&session);
    receiver(&framed);
}

/// The client's settings and transaction, chosen by the first octet.
fn client_setup(flags: u8) -> (ClientConfig<'static>, Transaction<'static>) {
    const RCPTS: [&[u8]; 4] = [
        b"a@x.example",
        b"b@x.example",
        b"c@x.example",
        b"d@x.example",
    ];
    let tls = match flags & 3 {
        0 => TlsMode::Opportunistic,
        1 => TlsMode::Required,
        _ => TlsMode::Verify,
    };
    let cfg = ClientConfig {
        helo: "relay.example",
        tls,
        tls_available: flags & 4 != 0,
    };
    let env = Transaction {
        from: if flags & 8 != 0 { b"" } else { b"s@y.example" },
        rcpts: &RCPTS[..1 + usize::from(flags >> 4 & 3)],
        size: if flags & 64 != 0 { 5_000_000 } else { 1200 },
        body8bit: flags & 128 != 0,
        smtputf8: flags & 0x18 == 0x18,
    };
    (cfg, env)
}

/// Feeds server octets to a new client in `reads`; records its events and
/// commands. Panics if it stalls or consumes more than it was given.
/// `keep`: the session is kept open, and each time it is idle with input
/// left, the next transaction resumes it (as the connection cache does).
fn run_client(flags: u8, keep: bool, reads: &[&[u8]]) -> Transcript {
    let (cfg, env) = client_setup(flags);
    let mut c = Client::new(cfg, env);
    if keep {
        c.keep_open();
    }
    // The current client has read input (else resuming it again is futile).
    let mut fed = false;
    let mut t = Transcript::default();
    let mut budget = 4 * reads.iter().map(|r| r.len()).sum::<usize>() + 64;
    for &read in reads {
        let mut rest = read;
        loop {
            assert!(budget > 0, "the client makes no progress");
            budget -= 1;
            if let Some(idle) = c.idle().filter(|_| keep && !rest.is_empty()) {
                if !fed {
                    // The same transaction again would fail the same way
                    // (too big, say) without reading: the end.
                    return t;
                }
                t.push(format!("resume {idle:?}"));
                c = Client::resume(cfg, env, idle);
                fed = false;
            }
            let step = c.feed(rest);
            fed |= step.consumed > 0;
            assert!(step.consumed <= rest.len(), "consumed more than given");
            let moved = step.consumed > 0;
            rest = &rest[step.consumed..];
            let event = step.event.map(|e| (format!("{e:?}"), e));
            let had = event.is_some();
            if let Some((text, e)) = event {
                t.push(text);
                match e {
                    CEvent::StartTls => c.tls_established(),
                    CEvent::SendMessage { .. } => c.message_sent(),
                    _ => {}
                }
            }
            let wrote = !c.output().is_empty();
            t.output.extend_from_slice(c.output());
            c.output_sent(c.output().len());
            if !had && !moved && !wrote {
                assert!(
                    rest.is_empty() || c.is_closed(),
                    "the client stalled: {t:?}"
                );
                break;
            }
        }
    }
    t
}

/// The outbound client: `[flags][seed]server-octets`. Fed whole, by octets
/// and in random splits, its events and commands must be the same. An odd
/// seed keeps the session open and resumes it for the next transaction.
pub fn client(data: &[u8]) {
    let ([flags, seed], server) = take::<2>(data);
    let keep = seed & 1 == 1;
    let whole = run_client(flags, keep, &[server]);
    if server.len() <= 2048 {
        let bytes: Vec<&[u8]> = server.chunks(1).collect();
        same(
            &whole,
            &run_client(flags, keep, &bytes),
            "split into octets",
        );
    }
    let mut dice = Dice::new(&[flags, seed]);
    let split = chunks(
        server,
        &mut dice,
        [3, 17, 200, 2000][usize::from(seed >> 6)],
    );
    same(&whole, &run_client(flags, keep, &split), "random split");
}
