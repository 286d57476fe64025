//! Unit tests of the appliance config: the sample, defaults, errors at
//! their line and column, the effective config read back.

use super::*;

#[test]
fn the_normative_sample_parses() {
    let text = include_str!("../../../config/sluice.toml");
    let c = Config::parse(text, Path::new("/etc/sluice")).expect("sample parses");
    assert_eq!(c.hostname, "edge1.contoso.com");
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.spool_dir, Path::new("/etc/sluice/spool"));
    assert_eq!(c.limits.command_timeout, Duration::from_secs(300));
    assert_eq!(c.limits.data_timeout, Duration::from_secs(600));
    assert_eq!(
        c.tls.map(|t| t.key),
        Some(PathBuf::from("/etc/sluice/tls/edge1.key"))
    );
}

/// The normative sample, as written in the repository.
const SAMPLE: &str = include_str!("../../../config/sluice.toml");

/// Checks `text` with no resolv.conf (servers: glibc's 127.0.0.1).
fn check(text: &str) -> Result<Config, Vec<Diag>> {
    Config::check(text, Path::new("/etc/sluice"), Path::new("/nonexistent"))
}

#[test]
fn the_normative_sample_is_accepted_as_written() {
    let c = check(SAMPLE).expect("sample passes the check");
    assert_eq!(c.listen.len(), 2);
    assert!(c.listen.iter().all(|l| l.starttls));
    assert_eq!(c.limits.connections, 1000);
    assert_eq!(c.limits.connections_per_ip, 50);
    assert_eq!(c.limits.bare_line_endings, BareLineEndings::Refuse);
    assert_eq!(c.queue.retry.len(), 7);
    assert_eq!(c.queue.retry[6], Duration::from_secs(4 * 3600));
    assert_eq!(c.queue.warn_after, Duration::from_secs(4 * 3600));
    assert_eq!(c.queue.expire_after, Duration::from_secs(2 * 86400));
    assert_eq!(c.queue.concurrency, 100);
    assert_eq!(c.queue.concurrency_per_destination, 10);
    assert_eq!(c.dns.static_mx["eu.contoso.com"].len(), 2);
    assert_eq!(c.dns.static_hosts.len(), 2);
}

#[test]
fn an_unknown_key_is_an_error_at_its_place_with_a_suggestion() {
    let e = check("hostname = \"a\"\n[limits]\nconections = 10\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (3, 1));
    assert!(e[0].message.contains("\"conections\""), "{}", e[0]);
    assert!(
        e[0].message.contains("did you mean \"connections\""),
        "{}",
        e[0]
    );
    // Every one is reported, at the top level and in [[listen]] too.
    let e = check("hostnme = \"a\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nstarttsl = true\n")
        .unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (1, 1));
    assert!(
        e[0].message.contains("did you mean \"hostname\""),
        "{}",
        e[0]
    );
    assert_eq!((e[1].line, e[1].col), (4, 1));
    assert!(
        e[1].message.contains("did you mean \"starttls\""),
        "{}",
        e[1]
    );
}

#[test]
fn an_unknown_section_is_an_error_at_its_header() {
    let e = check("[limits]\nconnections = 5\n\n[limts]\nconnections = 5\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (4, 2));
    assert_eq!(
        e[0].message,
        "unknown section [limts] (did you mean [limits]?)"
    );
    let e = check("[frobnicate]\n").unwrap_err();
    assert!(e[0].message.contains("expected one of"), "{}", e[0]);
    let e = check("fo = [1]\n[[lisen]]\naddress = \"127.0.0.1:25\"\n").unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].message
            .starts_with("unknown key \"fo\" in the top level"),
        "{}",
        e[0]
    );
    assert_eq!((e[1].line, e[1].col), (2, 3));
    assert!(e[1].message.contains("did you mean [listen]"), "{}", e[1]);
}

#[test]
fn a_bad_dns_value_is_found_at_its_line_and_column() {
    let text = "hostname = \"a\"\n\n[dns]\nservers = [\"192.0.2.1\", \"nope\"]\n";
    let e = check(text).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (4, 25));
    assert!(e[0].message.contains("dns.servers[1]"), "{}", e[0]);
    let text = "[dns]\nstatic_mx = { \"a.test\" = [[10, \"mx.test\"], [70000, \"mx.test\"]] }\n";
    let e = check(text).unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 44), "{e:?}");
    assert!(e[0].message.contains("preference"), "{}", e[0]);
    let e = check("[dns]\nattempts = 0\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 12), "{e:?}");
    let e = check("[dns]\nsrevers = []\n").unwrap_err();
    assert!(
        e[0].message.contains("did you mean \"servers\""),
        "{}",
        e[0]
    );
}

#[test]
fn values_of_every_section_are_checked_with_their_place() {
    let e = check("[queue]\nretry = [\"1m\", \"soon\"]\n[[listen]]\naddress = \"localhost:25\"\n")
        .unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (2, 16));
    assert!(e[0].message.contains("queue.retry"), "{}", e[0]);
    assert_eq!((e[1].line, e[1].col), (4, 11));
    assert!(e[1].message.contains("listen address"), "{}", e[1]);
}

#[test]
fn syslog_and_tls_are_checked_too() {
    let e = check("[syslog]\ntarget = \"file:/x\"\nfacility = \"mial\"\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].col), (2, 10));
    assert!(e[0].message.contains("syslog target"), "{}", e[0]);
    let e = check("[syslog]\nfacility = \"mial\"\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 12), "{e:?}");
    let e = check("[tls]\nkey = \"k.pem\"\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 7), "{e:?}");
    assert!(e[0].message.contains("go together"), "{}", e[0]);
}

#[test]
fn the_effective_config_reads_back_the_same() {
    let full = "hostname = \"h\"\nrules = \"r.toml\"\n\
                [tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\nca = \"o.pem\"\n\
                [limits]\nmax_message_size = \"10 MiB\"\ncommand_timeout = \"90s\"\n\
                bare_line_endings = \"normalize\"\n[queue]\nhold = true\nretry = [\"30s\"]\n\
                [dns]\nservers = [\"[::1]:5353\"]\ntimeout = 1.5\nattempts = 3\n\
                static = { \"x.test\" = [\"10.0.0.5\"] }\n\
                [upload]\nserial = \"/dev/ttyS0\"\nbaud = 9600\n\
                [report]\nlocal_domains = [\"US.contoso.com\"]\nflush_interval = \"30s\"\n";
    for text in [SAMPLE, full, ""] {
        let c = check(text).expect("checks");
        let printed = c.effective_toml();
        let back = check(&printed).unwrap_or_else(|e| panic!("{e:?}\n{printed}"));
        assert_eq!(back, c, "{printed}");
    }
}

#[test]
fn tls_may_hold_only_the_outbound_ca() {
    let c = Config::parse("[tls]\nca = \"ca.pem\"\n", Path::new("/etc/sluice")).expect("ca only");
    assert!(c.tls.is_none());
    assert_eq!(c.ca, Some(PathBuf::from("/etc/sluice/ca.pem")));
    let e = Config::parse("[tls]\ncertificate = \"c.pem\"\n", Path::new("/x")).unwrap_err();
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn the_embedded_default_parses() {
    let c = Config::load(None).expect("default");
    assert_eq!(c.listen[0].address, "127.0.0.1:2525");
    assert!(c.tls.is_none());
}

#[test]
fn a_reload_names_the_sections_that_need_a_restart() {
    let base = "hostname = \"a\"\n[[listen]]\naddress = \"127.0.0.1:25\"\n";
    let old = Config::parse(base, Path::new(".")).expect("old");
    let same = Config::parse(
        &format!("{base}[limits]\nconnections = 5\n"),
        Path::new("."),
    )
    .expect("limits");
    assert!(old.restart_only_changes(&same).is_empty());
    let new = Config::parse(
        "hostname = \"b\"\nspool_dir = \"s2\"\n[[listen]]\naddress = \"127.0.0.1:26\"\n\
         [queue]\nretry = [\"1s\"]\n[dns]\nservers = [\"192.0.2.53\"]\n[tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n\
         [syslog]\ntarget = \"stderr\"\n[upload]\nbaud = 9600\n",
        Path::new("."),
    )
    .expect("new");
    assert_eq!(
        old.restart_only_changes(&new),
        [
            "[[listen]]",
            "spool_dir",
            "[queue]",
            "[dns]",
            "[tls] ca",
            "[syslog]",
            "[upload]"
        ]
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("36 MiB"), Some(36 * 1024 * 1024));
    assert_eq!(parse_size("1 KiB"), Some(1024));
    assert_eq!(parse_size("1000"), Some(1000));
    assert_eq!(parse_size("12 parsecs"), None);
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
    assert_eq!(parse_duration("soon"), None);
}

#[test]
fn errors_name_line_and_column() {
    let e = Config::parse(
        "hostname = \"a\"\n[limits]\nconnections = \"many\"\n",
        Path::new("."),
    )
    .expect_err("bad type");
    assert!(e.starts_with("3:15: "), "{e}");
    let e = Config::parse(
        "[limits]\nbare_line_endings = \"sometimes\"\n",
        Path::new("."),
    )
    .expect_err("bad value");
    assert!(e.contains("bare_line_endings"), "{e}");
}

#[test]
fn the_board_profiles_pass_the_check() {
    for (board, text) in [
        ("armv7", include_str!("../../../boards/armv7/sluice.toml")),
        (
            "rpi4-aarch64",
            include_str!("../../../boards/rpi4-aarch64/sluice.toml"),
        ),
        ("x86_64", include_str!("../../../boards/x86_64/sluice.toml")),
    ] {
        if let Err(e) = check(text) {
            panic!("boards/{board}/sluice.toml: {e:?}");
        }
    }
}

#[test]
fn client_certificates_are_named_and_checked_at_their_place() {
    let ok = "[[tls.client]]\nname = \"edge\"\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n";
    let c = check(ok).expect("one client certificate");
    assert_eq!(
        c.tls_clients,
        vec![ClientCertFiles {
            name: "edge".into(),
            certificate: PathBuf::from("/etc/sluice/c.pem"),
            key: PathBuf::from("/etc/sluice/k.pem"),
        }]
    );
    assert!(c.tls.is_none(), "no server certificate for that");
    assert!(
        c.effective_toml().contains("[[tls.client]]"),
        "{}",
        c.effective_toml()
    );
    // Twice the same name, a missing key, an unknown key: each at its line.
    let e = check(&format!("{ok}{ok}")).unwrap_err();
    assert_eq!((e[0].line, e[0].col), (6, 8), "{e:?}");
    assert!(e[0].message.contains("declared twice"), "{e:?}");
    let e = check("hostname = \"a\"\n[[tls.client]]\nname = \"edge\"\ncertificate = \"c.pem\"\n")
        .unwrap_err();
    assert!(e[0].message.contains("needs key"), "{e:?}");
    assert!(e[0].line > 1, "at its table: {e:?}");
    let e = check("[[tls.client]]\nname = \"edge\"\ncert = \"c.pem\"\nkey = \"k\"\n").unwrap_err();
    assert!(
        e.iter()
            .any(|d| (d.line, d.col) == (3, 1) && d.message.contains("unknown key \"cert\"")),
        "{e:?}"
    );
}

#[test]
fn milters_are_checked_at_their_place_and_read_back() {
    let ok = "[[milter]]\nname = \"spam\"\naddress = \"inet:127.0.0.1:11332\"\n\n\
              [[milter]]\nname = \"dkim\"\naddress = \"unix:/run/dkim.sock\"\n\
              on_failure = \"accept\"\noriginating = true\nmacros = { mail = [\"i\"] }\n";
    let c = check(ok).expect("valid");
    assert_eq!(c.milters.len(), 2);
    assert_eq!(c.milters[1].on_failure, super::OnFailure::Accept);
    assert_eq!(c.milters[1].macros[2], vec!["i".to_string()]);
    let again = check(&c.effective_toml()).expect("reads back");
    assert_eq!(again.milters, c.milters);
    let e = check("[[milter]]\nname = \"x\"\naddress = \"inet:h:1\"\non_failure = \"maybe\"\n")
        .unwrap_err();
    assert_eq!((e[0].line, e[0].col), (4, 14), "{e:?}");
    let e = check("[[milter]]\nname = \"x\"\naddress = \"h:1\"\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (3, 11), "{e:?}");
    let e =
        check("[[milter]]\nname = \"x\"\naddress = \"inet:h:1\"\ntimeout = \"1s\"\n").unwrap_err();
    assert!(e[0].message.contains("timeout"), "{e:?}");
    assert_eq!(e[0].line, 4);
}

#[test]
fn the_report_section_is_checked_with_its_place() {
    let c = check("[report]\nlocal_domains = [\"US.Contoso.com\"]\n").expect("checks");
    assert_eq!(c.report.local_domains, ["us.contoso.com"]);
    assert_eq!(c.report.flush_interval, std::time::Duration::from_secs(300));
    let e = check("[report]\nlocal_domains = [\"a.test\", \"not a domain\"]\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 28), "{e:?}");
    assert!(e[0].message.contains("not a domain"), "{}", e[0]);
    let e = check("[report]\nflush_interval = \"2h\"\n").unwrap_err();
    assert_eq!((e[0].line, e[0].col), (2, 18), "{e:?}");
    let e = check("[report]\nlocal_domain = []\n").unwrap_err();
    assert!(e[0].message.contains("did you mean"), "{}", e[0]);
}
