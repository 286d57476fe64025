//! Policy benchmark: decisions per second for one message against rule
//! tables of 16, 256 and 1,024 rules, and the compiled blob's size.
//!
//! Run: `cargo bench --bench policy_eval`. The rules are varied (header
//! presence and value patterns, recipient domains, sender groups, client
//! networks); none matches the benchmark message, so every rule is
//! evaluated and the result is NoAction: the worst case, which must grow no
//! worse than linearly with the number of rules. The client (192.0.2.1) is
//! anonymous, so of the two recipients `x@gmail.com` is refused by the
//! recipient filter before the rules: only `user@contoso.com` goes through
//! them (the ns/rule/rcpt column divides by both recipients).
//!
//! Environment: `RULES="16 1024"` picks the table sizes, `MS=` the time
//! spent on each figure (default 1500), `ENGINE_ONLY=1` prints the engine's
//! iterations and skips the daemon's `decide`, for counting instructions
//! per message under `valgrind --tool=callgrind` (bench/README.md says how).
use sluice::engine::policy::{
    attribute, evaluate_with, Addr, Agent, Decision, Edit, Note, Sink, Table,
};
use sluice::shell::policy::{compile as rules, runtime as policy};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

struct Null(u64);

impl Sink<'_> for Null {
    fn decision(&mut self, _: u16, d: &Decision) {
        self.0 += u64::from(d.connector.unwrap_or(0));
    }
    fn edit(&mut self, _: Agent, _: Edit) {
        self.0 += 1;
    }
    fn note(&mut self, _: Agent, _: Note<'_>) {
        self.0 += 1;
    }
    fn sender(&mut self, _: &Addr) {}
}

fn rule_file(n: usize) -> String {
    let mut s = String::from(
        "version = 1\n[domains]\naccepted = [\"contoso.com\", \"eu.contoso.com\"]\ndefault = \"contoso.com\"\n\
         [groups]\nSales = [\"*@sales.contoso.com\", \"jaap@contoso.com\"]\n\
         [[inbound]]\nname = \"org\"\nkind = \"organization\"\nclient_ips = [\"10.0.0.0/8\"]\n\
         [[connector]]\nname = \"internet\"\naddress_spaces = [\"*\"]\n\
         [[connector]]\nname = \"trend\"\naddress_spaces = [\"trend.local\"]\nsmart_hosts = [\"hes.trend.example:25\"]\n",
    );
    for i in 0..n {
        let cond = match i % 8 {
            0 => format!("header = \"X-Bench-{i}\", header_value_matches = '(?i)^route-{i}$'"),
            1 => format!("header = \"X-Absent-{i}\""),
            2 => format!("recipient_domain = [\"d{i}.example\", \"e{i}.example\"]"),
            3 => "sender_group = \"Sales\", recipient_location = \"outside\"".to_string(),
            4 => format!("client_network = [\"192.168.{}.0/24\"]", i % 256),
            5 => format!("sender_domain = \"s{i}.example\""),
            6 => format!("recipient = \"user{i}@example.org\""),
            _ => format!("header_absent = \"Message-ID\", sender = \"*@s{i}.example\""),
        };
        s.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\npriority = {}\nif = {{ {cond} }}\nthen = {{ route_to = \"trend.local\" }}\n",
            i + 1
        ));
    }
    s
}

const MESSAGE: &[u8] = b"Received: from a.example by b.example; Sun, 22 Nov 2026 08:00:00 +0000\r\n\
Received: from c.example by a.example; Sun, 22 Nov 2026 07:59:59 +0000\r\n\
From: Someone <someone@outside.example>\r\nTo: user@contoso.com, x@gmail.com\r\nSubject: quarterly numbers\r\n\
Message-ID: <1234@outside.example>\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nX-Bench-0: not-this\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n";

fn main() {
    println!(
        "{:>6} {:>10} {:>14} {:>14} {:>12}",
        "rules", "blob B", "engine dec/s", "decide dec/s", "ns/rule/rcpt"
    );
    let sizes: Vec<usize> = std::env::var("RULES")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_else(|_| vec![16, 256, 1024]);
    let ms = std::env::var("MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let engine_only = std::env::var_os("ENGINE_ONLY").is_some();
    for n in sizes {
        let text = rule_file(n);
        let compiled = match rules::compile(&text) {
            Ok(c) => c,
            Err(d) => panic!(
                "bench rules do not compile: {:?}",
                d.first().map(|d| &d.message)
            ),
        };
        // Through the blob, as a box installs it.
        let decoded = std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn({
                let blob = compiled.blob.clone();
                move || Table::from_blob(&blob).map(Box::new)
            })
            .expect("thread")
            .join()
            .expect("join")
            .expect("blob");
        let pol = policy::Policy::new(decoded).expect("policy");
        let table: &Table = &pol.table;
        let peer: IpAddr = "192.0.2.1".parse().expect("ip");
        let att = attribute(table, &policy::ip16(peer), None);
        let rcpts: [&[u8]; 2] = [b"user@contoso.com", b"x@gmail.com"];
        let headers = policy::header_block(MESSAGE);
        let m = sluice::engine::policy::Message {
            attribution: att,
            client_ip: policy::ip16(peer),
            sender: b"someone@outside.example",
            headers,
            attachments: &[],
            size: MESSAGE.len() as u64,
            directory: None,
            rcpt_checks: None,
            auth: None,
            login: b"",
        };
        // The engine alone (what a no_std build runs).
        let mut sink = Null(0);
        let (mut iters, start) = (0u64, Instant::now());
        while start.elapsed() < Duration::from_millis(ms) {
            for _ in 0..16 {
                black_box(evaluate_with(table, &pol, black_box(&m), &rcpts, &mut sink));
            }
            iters += 16;
        }
        let engine = iters as f64 / start.elapsed().as_secs_f64();
        if engine_only {
            println!(
                "{n:>6} {:>10} {engine:>14.0} iterations {iters}",
                compiled.blob.len()
            );
            continue;
        }
        // The shell's decide(): engine + attachment parse + rendering (what the daemon runs).
        let (mut iters2, start) = (0u64, Instant::now());
        while start.elapsed() < Duration::from_millis(ms) {
            let env = policy::Arrival {
                attribution: att,
                client: peer,
                sender: b"someone@outside.example",
                rcpts: &rcpts,
                directory: None,
                rcpt_checks: None,
                auth: None,
                login: None,
            };
            black_box(policy::decide(&pol, &env, MESSAGE));
            iters2 += 1;
        }
        let decide = iters2 as f64 / start.elapsed().as_secs_f64();
        println!(
            "{n:>6} {:>10} {engine:>14.0} {decide:>14.0} {:>12.1}",
            compiled.blob.len(),
            1e9 / engine / n as f64 / rcpts.len() as f64
        );
        black_box(sink.0);
    }
}
