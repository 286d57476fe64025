//! Every fixed capacity of the engine, with the reason for its size.
//!
//! Exceeding one gives a protocol answer (see [`super::reply::Reason`]),
//! never a panic.

/// Longest command line kept, CRLF included. RFC 5321 §4.5.3.1.4 sets 512
/// octets, but SMTPUTF8 addresses (up to four bytes a character) and MAIL
/// parameters legitimately exceed it; 2048 covers both with room to spare.
pub const MAX_COMMAND_LINE: usize = 2048;

/// Bytes of replies held for one flush. A pipelined burst (RFC 2920) of
/// about a hundred short replies fits; when less than [`MAX_REPLY`] is free
/// the engine stops consuming until the shell flushes.
pub const REPLY_BUFFER: usize = 4096;

/// Longest single reply the engine writes (the EHLO reply is the longest,
/// about 200 octets plus the host name).
pub const MAX_REPLY: usize = 768;

/// Longest host name kept for the greeting and EHLO (RFC 1035: 255 octets).
pub const MAX_HOSTNAME: usize = 255;

/// Longest reverse or forward path, angle brackets excluded
/// (RFC 5321 §4.5.3.1.3: 256 octets).
pub const MAX_PATH: usize = 256;

/// Error replies in one session before it is closed with `421 4.7.0`;
/// like Postfix's `smtpd_hard_error_limit`, it stops dictionary attacks and
/// clients stuck in a loop.
pub const MAX_ERRORS: u16 = 20;

/// Largest header block accepted, like Postfix's `header_size_limit`
/// (100 KiB): enough for 30 hops of `Received:` plus DKIM and ARC sets, and
/// it bounds what the shell keeps in memory for policy decisions.
pub const MAX_HEADER_BLOCK: usize = 100 * 1024;

/// Header fields the policy evaluation scans once and keeps per message
/// (name, value and the name the rules see, 48 octets each on a 64-bit
/// box: 3 KiB of stack). Mail through Exchange carries 30–60 fields
/// (`Received`, ARC and DKIM sets, `X-MS-Exchange-*`); a block with more
/// is read afresh each time an agent or rule asks: the same answers, as
/// before the list was kept, only slower.
pub const MAX_KEPT_FIELDS: usize = 64;

/// Hard ceiling on recipients per message; the configured limit may only be
/// lower. 1000 is what large list servers send in one transaction.
pub const MAX_RECIPIENTS: u32 = 1000;

// ---- the compiled policy (engine::policy::Table) -------------------------
// Sized for a site's rule file with room to spare, and for the 1,024-rule
// benchmark; the whole table stays under 600 KiB.

/// Octets of all strings of a policy (names, domains, addresses, texts).
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Strings in lists (accepted domains, group members, smart hosts, condition lists).
pub const MAX_ITEMS: usize = 4096;
/// Sender / recipient groups.
pub const MAX_GROUPS: usize = 64;
/// Inbound connectors (CMT keeps them in a 32-bit mask).
pub const MAX_INBOUND: usize = 32;
/// Networks (inbound connectors, conditions, connection filter).
pub const MAX_NETS: usize = 256;
/// Send connectors.
pub const MAX_CONNECTORS: usize = 64;
/// Address spaces of all send connectors.
pub const MAX_SPACES: usize = 256;
/// Entries of all rewrite maps (a directory of a few thousand users fits).
pub const MAX_REWRITES: usize = 4096;
/// Header firewall renames.
pub const MAX_RENAMES: usize = 16;
/// Transport rules.
pub const MAX_RULES: usize = 1024;
/// Condition sets (each rule's `if` plus its `except` sets).
pub const MAX_CONDSETS: usize = 2048;
/// Conditions of all rules.
pub const MAX_CONDITIONS: usize = 4096;
/// Actions of all rules.
pub const MAX_ACTIONS: usize = 2048;
/// Regex patterns (compiled to sparse DFAs).
pub const MAX_DFAS: usize = 256;
/// Octets of all sparse DFAs; a case-insensitive header pattern takes 1-3 KiB.
pub const MAX_DFA_BYTES: usize = 256 * 1024;
/// Agents of the pipeline (every built-in agent once).
pub const MAX_AGENTS: usize = 16;
/// Entries of the rule index ([`crate::engine::policy::RuleIndex`]): one
/// per domain a rule's index key names (its first sender or recipient
/// condition: a domain list, address list or group), in the recipient and
/// the sender map together. A key's domains are list items or group
/// members, which `MAX_ITEMS` bounds; rules sharing a group repeat its
/// domains, so the index gets the same 4,096 (two octets an entry).
pub const MAX_INDEX_ENTRIES: usize = 4096;
/// Buckets of each map of the rule index, a power of two: at least four
/// times the map's keys so that a lookup seldom meets another key's rules,
/// at most this (a table with more keys shares buckets, still exact).
/// 2,048 holds the 1,024-rule benchmark's 512 recipient domains at a
/// quarter load for 4 KiB of offsets.
pub const MAX_INDEX_BUCKETS: usize = 2048;

// ---- the recipient directory (engine::directory) -------------------------

/// Addresses of an installed directory (every `mail`, proxy and target
/// address of every entry). Issue 10 asks for at least 200,000; 2^18 leaves
/// room for growth and keeps the table (12 octets an address plus the pool
/// of primary addresses) near 6 MiB, which a 64 MiB board holds.
pub const MAX_DIRECTORY_ADDRESSES: usize = 262_144;

/// Octets of the directory's pool of primary addresses (each stored once,
/// with a two-octet length): 2^18 primaries of 60 octets on average.
pub const MAX_DIRECTORY_POOL: usize = 16 * 1024 * 1024;

// ---- the Edge protection agents (recipient and sender filters) ----------

/// Longest `[recipient_filter] tarpit`, milliseconds. A tarpit slows a
/// harvester; a minute is already far beyond what Exchange uses (5 s) and
/// stays well inside the 5-minute reply wait RFC 5321 §4.5.3.2 gives
/// clients, so a legitimate client never times out on it.
pub const MAX_TARPIT_MS: u32 = 60_000;

/// Longest call-ahead probe, seconds (`call_ahead_timeout`): the probe runs
/// while the client waits for its RCPT reply, which RFC 5321 §4.5.3.2
/// lets it wait 5 minutes for; one minute leaves room for a few probes.
pub const MAX_CALL_AHEAD_TIMEOUT: u16 = 60;

/// Call-ahead answers remembered (positive and negative together); the
/// least recently used is evicted. 4096 addresses of at most
/// [`MAX_PATH`] octets bound the cache to about 1.2 MiB, and cover the
/// recipients a small site's box sees in a TTL's time many times over.
pub const CALL_AHEAD_CACHE: usize = 4096;

// ---- the Edge agents: connection filter and protocol analysis ----------

/// DNS block and allow list providers in one policy. Every one is asked at
/// connect time, concurrently; eight is more than any site runs (two or
/// three block lists and an allow list are usual).
pub const MAX_DNS_LISTS: usize = 8;
/// Return codes listed per DNS block list (`codes = [...]`); providers
/// document a handful (Spamhaus ZEN: 127.0.0.2-4, 9, 10, 11).
pub const MAX_LIST_CODES: usize = 8;
/// Longest DNS name in text form, without the final dot (RFC 1035 §2.3.4:
/// 255 octets on the wire, 253 characters written out). An IPv6 query name
/// takes 64 of them, so a list zone may be up to 189 characters long.
pub const MAX_DNS_NAME: usize = 253;
/// DNS list answers cached (one per client address and zone), by their
/// TTL; beyond it the entry nearest to expiry goes. At about 100 octets an
/// entry, 4,096 take under half a MiB and hold an hour of a small site's
/// distinct clients.
pub const MAX_LIST_CACHE: usize = 4096;
/// Client addresses whose rate-limit buckets and protocol analysis score
/// are kept; beyond it the least recently seen address is forgotten. At
/// about 100 octets an entry, 4,096 take under half a MiB; a spam run from
/// more addresses than that is what the DNS block lists are for.
pub const MAX_CLIENTS: usize = 4096;

// ---- sender authentication: SPF (engine::spf) ----------------------------

/// Octets of one SPF record (its TXT strings joined). RFC 7208 §3.4 asks
/// publishers to fit the answer in 512 octets of UDP; real records of big
/// senders reach about 1 KiB through several strings. A longer record is a
/// local limit, answered `permerror` with that reason.
pub const MAX_SPF_RECORD: usize = 2048;
/// Records evaluated at once: the checked domain plus one per `include`
/// level. Each include costs one of the 10 DNS-querying terms (RFC 7208
/// §4.6.4), so ten levels below the top are the most a check can reach.
pub const MAX_SPF_DEPTH: usize = 11;
/// Names one `mx` or `ptr` term looks at: RFC 7208 §4.6.4 allows 10
/// address lookups per `mx` (more MX names: `permerror`) and uses the
/// first 10 PTR names.
pub const MAX_SPF_NAMES: usize = 10;
/// DNS-querying terms per check (`include`, `a`, `mx`, `ptr`, `exists`,
/// `redirect`), RFC 7208 §4.6.4; the 11th is `permerror`.
pub const SPF_LOOKUP_LIMIT: u8 = 10;
/// Lookups that return no answer (NXDOMAIN or no data) per check; the RFC
/// recommends two (§4.6.4); the third is `permerror`.
pub const SPF_VOID_LIMIT: u8 = 2;
/// Octets of an expanded explanation (`exp=`), the text of a `550` reply
/// line; longer text is cut.
pub const MAX_SPF_EXPLANATION: usize = 512;

// ---- sender authentication: DKIM (engine::dkim) ---------------------------

/// Octets of a base64 tag value once its folding white space is gone: an
/// RSA-4096 public key (`p=`, 550 octets of SubjectPublicKeyInfo) takes 736
/// characters and its signature (`b=`) 684; 2 KiB leaves room for 8192-bit
/// keys' signatures. Longer values are `permerror`.
pub const MAX_DKIM_BASE64: usize = 2048;

// ---- the milter protocol (engine::milter) ---------------------------------

/// Largest milter packet (length field, command octet and data) sluice
/// reads or writes. libmilter's largest negotiable data size is 1 MiB
/// (`SMFIP_MDS_1M`), a body replacement chunk at most that; a header change
/// or a reply code is far smaller. A longer length is refused as a protocol
/// error before a single octet of it is buffered.
pub const MAX_MILTER_PACKET: usize = 1024 * 1024 + 64;
/// Body octets sent in one `SMFIC_BODY` packet: libmilter's default data
/// size (`MILTER_CHUNK_SIZE`, 64 KiB less one), which every milter accepts
/// without negotiating a larger one.
pub const MILTER_CHUNK: usize = 65_535;
/// Longest macro name and value sluice sends (each); Postfix's values
/// (addresses, host names, queue ids) are under 1 KiB.
pub const MAX_MILTER_MACRO: usize = 1024;
/// Macro lists (`SMFIR_SETSYMLIST`) a milter may ask for: one per stage,
/// seven stages (connect, HELO, MAIL, RCPT, DATA, end of message, end of
/// headers).
pub const MILTER_MACRO_STAGES: usize = 7;

// ---- SMTP AUTH (RFC 4954, RFC 4616) --------------------------------------

/// Longest decoded SASL response kept: a PLAIN message of authorization
/// id, login and password of up to 255 octets each (RFC 4616 §2) and the
/// two NULs between them. Longer is refused `500 5.5.6`.
pub const MAX_AUTH_DECODED: usize = 3 * 255 + 2;

/// Longest AUTH command or response line, CRLF included: the base64 of
/// [`MAX_AUTH_DECODED`] octets (1,024 characters) after `AUTH PLAIN ` and
/// before the CRLF, rounded up. A longer line gets `500 5.5.6`
/// (RFC 4954 §4 lets a server cap it; 12,288 octets would be wasted here).
pub const MAX_AUTH_LINE: usize = 1040;
