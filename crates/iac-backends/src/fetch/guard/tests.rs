//! Unit tests of the guard's rules: which addresses are private, allowlist parsing and its
//! errors, URL checks (IP literals in their odd forms, listed names and ports), and the
//! resolver filtering what DNS answers.

use std::net::IpAddr;

use super::*;

fn guard(entries: &[&str]) -> Arc<NetGuard> {
    let parsed: Vec<AllowedHost> = entries
        .iter()
        .map(|e| AllowedHost::new(e).unwrap())
        .collect();
    Arc::new(NetGuard::new(&parsed))
}

#[test]
fn private_and_local_addresses_are_recognised() {
    let private = [
        "127.0.0.1",
        "127.255.0.9",
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "198.18.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
    ];
    for a in private {
        assert!(is_private(a.parse().unwrap()), "{a} is private");
    }
    let public = [
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.1",
        "172.32.0.1",
        "192.0.3.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
    ];
    for a in public {
        assert!(!is_private(a.parse().unwrap()), "{a} is public");
    }
}

#[test]
fn allowlist_entries_parse_and_bad_ones_are_named() {
    for ok in [
        "git.internal",
        "Git.Internal.:443",
        "10.0.0.0/8",
        "10.1.2.3",
        "10.1.2.3:8443",
        "fd00::/8",
        "[fd00::1]:443",
        "[fd00::1]",
        "::1",
    ] {
        AllowedHost::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        ("", "empty"),
        ("10.0.0.0/33", "prefix \"33\" is not a number from 0 to 32"),
        ("fd00::/129", "from 0 to 128"),
        ("nothost/8", "\"nothost\" is not an IP address"),
        (
            "git.internal:0",
            "port \"0\" is not a number from 1 to 65535",
        ),
        ("git.internal:http", "port \"http\""),
        ("[fd00::1", "without a closing ']'"),
        ("[fd00::1]443", "expected ':PORT' after ']'"),
        ("fd00::1:99999", "port \"99999\""),
        ("git internal", "not a valid host name"),
        ("http://git.internal", "a URL, not a host"),
    ] {
        let e = AllowedHost::new(bad).unwrap_err();
        assert!(
            e.contains(&format!("allow_private_hosts entry {bad:?}"))
                && e.contains(why)
                && e.contains("expected HOST, HOST:PORT"),
            "{bad:?}: {e}"
        );
    }
    // As configuration: the error names the entry when the file is read.
    let e = serde_json::from_str::<super::super::FetchConfig>(
        r#"{"allow_private_hosts": ["10.0.0.0/8", "10.0.0.0/40"]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"10.0.0.0/40\""), "{e}");
    let e = serde_json::from_str::<super::super::FetchConfig>(r#"{"refuse_private": "never"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("api") && e.contains("always"), "{e}");
    let c: super::super::FetchConfig = serde_json::from_str(
        r#"{"refuse_private": "always", "allow_private_hosts": ["git.internal:443"]}"#,
    )
    .unwrap();
    assert!(c.guarded());
    assert_eq!(c.allow_private_hosts[0].as_str(), "git.internal:443");
    assert_eq!(
        serde_json::to_value(&c).unwrap()["allow_private_hosts"],
        serde_json::json!(["git.internal:443"])
    );
    assert!(!super::super::FetchConfig::default().guarded());
}

#[test]
fn urls_are_checked_before_any_connection() {
    let g = guard(&[]);
    for refused in [
        "https://127.0.0.1:9/x.git",
        "http://2130706433/x",
        "http://0x7f.1/x",
        "http://017700000001/x",
        "https://[::1]/x",
        "https://[::ffff:7f00:1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1/x",
        "https://0.0.0.0:22/",
    ] {
        let e = g.check_url(refused).unwrap_err();
        assert!(
            matches!(&e, FetchError::Refused { slug } if slug == refused),
            "{refused}: {e}"
        );
        assert!(
            e.to_string().ends_with(
                "resolves to a private or local address; allow it with [fetch] allow_private_hosts"
            ),
            "{e}"
        );
    }
    // Names pass here; the resolver filters them.
    for passes in [
        "https://github.com/o/r.git",
        "https://localhost/x",
        "https://8.8.8.8/x",
        "file:///srv/mirror/r.git",
    ] {
        g.check_url(passes).unwrap();
    }

    let g = guard(&[
        "git.internal:443",
        "10.9.0.0/16",
        "127.0.0.1:8443",
        "mirror.lan",
    ]);
    g.check_url("https://git.internal/x.git").unwrap();
    g.check_url("https://GIT.internal./x.git").unwrap();
    assert!(
        g.check_url("https://git.internal:22/x.git").is_err(),
        "listed name, other port"
    );
    g.check_url("http://mirror.lan:8080/x").unwrap();
    g.check_url("https://10.9.3.4:6379/").unwrap();
    assert!(g.check_url("https://10.10.0.1/").is_err());
    g.check_url("https://127.0.0.1:8443/").unwrap();
    assert!(
        g.check_url("https://127.0.0.1:8444/").is_err(),
        "listed address, other port"
    );
    g.check_url("https://[::ffff:10.9.0.1]/").unwrap();
}

#[tokio::test]
async fn the_resolver_drops_private_answers_unless_allowed() {
    use reqwest::dns::Resolve;
    let name = |s: &str| -> reqwest::dns::Name { s.parse().unwrap() };
    let flag = Arc::new(AtomicBool::new(false));
    let r = guard(&[]).resolver(Some(flag.clone()));
    let e = match r.resolve(name("localhost")).await {
        Ok(a) => panic!("localhost resolved to {:?}", a.collect::<Vec<_>>()),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("localhost") && is_refusal(&e), "{e}");
    assert!(flag.load(Ordering::SeqCst), "the refusal is flagged");

    // Listed by name: every answer is kept; listed by block: loopback answers are kept.
    for entries in [&["localhost"][..], &["127.0.0.0/8", "::1"][..]] {
        let addrs: Vec<IpAddr> = guard(entries)
            .resolver(None)
            .resolve(name("localhost"))
            .await
            .unwrap()
            .map(|a| a.ip())
            .collect();
        assert!(
            addrs.iter().any(|a| a.is_loopback()),
            "{entries:?}: {addrs:?}"
        );
    }
}
