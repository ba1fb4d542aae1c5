//! Sandboxes: copies of some of a project's services (a feature branch, say) that run beside the
//! baseline and receive only the requests that ask for them.
//!
//! * A sandbox is named by a DNS label ([`SandboxName`]). A copy of service `<svc>` in sandbox
//!   `<name>` is a mesh member of its own named `<svc>--sb-<name>` ([`copy_name`]): its containers
//!   are `<project>-<svc>--sb-<name>` and `<project>-<svc>--sb-<name>-envoy`, its network alias and
//!   certificate DNS SANs `<svc>--sb-<name>` and `<svc>--sb-<name>.<project>`, its identity
//!   `spiffe://iac/<project>/<svc>/sandbox/<name>` ([`identity_path`]). The infix
//!   [`COPY_INFIX`] is reserved: no baseline service may contain it ([`check_baseline_name`]),
//!   so a copy's name always splits back into its service and sandbox ([`parse_copy`]).
//! * Every object of a copy carries the label [`LABEL_SANDBOX`]` = <name>`: a baseline deploy
//!   never looks at such objects, a sandbox deploy looks only at its own.
//! * A request picks a sandbox with the header [`SANDBOX_HEADER`]` : <name>` or the W3C baggage
//!   list-member [`BAGGAGE_KEY`]` = <name>` ([`baggage_regex`]); every Envoy route to a service
//!   that has a copy in that sandbox sends it to the copy, everything else to the baseline.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::NameError;
use crate::name::{MAX_LABEL, ServiceName};

/// The label every container of a sandbox copy carries: the sandbox's name.
pub const LABEL_SANDBOX: &str = "iac.sandbox";
/// Between a service's name and its sandbox's in a copy's name (`<svc>--sb-<sandbox>`); no
/// baseline service name may contain it.
pub const COPY_INFIX: &str = "--sb-";
/// The request header that picks a sandbox.
pub const SANDBOX_HEADER: &str = "x-iac-sandbox";
/// The W3C baggage key that picks a sandbox (`baggage: iac-sandbox=<name>`).
pub const BAGGAGE_KEY: &str = "iac-sandbox";

/// A sandbox's name: a DNS label short enough that every copy's name stays one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxName(String);

/// Longest sandbox name: a copy of a one-letter service must still be a DNS label.
pub const MAX_SANDBOX_NAME: usize = MAX_LABEL - COPY_INFIX.len() - 1;

impl SandboxName {
    /// Checks `s` is a DNS label of at most [`MAX_SANDBOX_NAME`] characters.
    pub fn new(s: &str) -> Result<Self, NameError> {
        // The same rules as a service name, then the length a copy's name leaves.
        let label = ServiceName::new(s)?;
        if label.as_str().len() > MAX_SANDBOX_NAME {
            return Err(NameError {
                name: s.to_string(),
                why: format!(
                    "is longer than {MAX_SANDBOX_NAME} characters (a sandbox copy is named \
                     <service>{COPY_INFIX}<sandbox>, a DNS label of at most {MAX_LABEL})"
                ),
            });
        }
        Ok(SandboxName(s.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SandboxName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<SandboxName> for String {
    fn from(n: SandboxName) -> String {
        n.0
    }
}

impl std::str::FromStr for SandboxName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Which baseline service a mesh member copies, in which sandbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SandboxCopy {
    /// The baseline service it stands in for.
    pub of: ServiceName,
    /// Its sandbox.
    pub sandbox: SandboxName,
}

/// `<svc>--sb-<sandbox>`: the copy's service name. Fails when it would not be a DNS label (too
/// long), naming both.
pub fn copy_name(svc: &ServiceName, sandbox: &SandboxName) -> Result<ServiceName, NameError> {
    let name = format!("{svc}{COPY_INFIX}{sandbox}");
    ServiceName::new(&name).map_err(|e| NameError {
        name,
        why: format!(
            "{} (the copy of service {svc} in sandbox {sandbox}; expected service and sandbox \
             names together of at most {} characters)",
            e.why,
            MAX_LABEL - COPY_INFIX.len()
        ),
    })
}

/// The service and sandbox of a copy's name; `None` for a baseline service's name.
pub fn parse_copy(name: &str) -> Option<SandboxCopy> {
    let (svc, sandbox) = name.split_once(COPY_INFIX)?;
    Some(SandboxCopy {
        of: ServiceName::new(svc).ok()?,
        sandbox: SandboxName::new(sandbox).ok()?,
    })
}

/// The path of a member's identity under `spiffe://iac/<project>/`: `<svc>` for a baseline
/// service, `<svc>/sandbox/<sandbox>` for a copy.
pub fn identity_path(name: &str) -> String {
    match parse_copy(name) {
        Some(c) => format!("{}/sandbox/{}", c.of, c.sandbox),
        None => name.to_string(),
    }
}

/// Refuses a baseline service name that contains the reserved [`COPY_INFIX`].
pub fn check_baseline_name(name: &ServiceName) -> Result<(), NameError> {
    if name.as_str().contains(COPY_INFIX) {
        return Err(NameError {
            name: name.to_string(),
            why: format!(
                "contains {COPY_INFIX:?}, which names sandbox copies (<service>{COPY_INFIX}<sandbox>); \
                 expected a service name without it"
            ),
        });
    }
    Ok(())
}

/// An RE2 regex (Envoy's `safe_regex`, which must match the whole value) that matches a
/// `baggage` header holding the list-member `iac-sandbox=<sandbox>`, with or without properties
/// (`;…`) and optional whitespace, anywhere in the list. Envoy joins repeated `baggage` headers
/// with `,`, which is the list separator, so a member in any of them matches. A sandbox name is
/// a DNS label: it has no character special to a regex. OpenTelemetry's Python SDK keeps no
/// member properties: it re-sends `iac-sandbox=feat;p=1` as `iac-sandbox=feat%3Bp%3D1`, so a
/// percent-encoded `;` (`%3B`) after the name ends it too.
pub fn baggage_regex(sandbox: &SandboxName) -> String {
    format!(r"(.*,)?[ \t]*{BAGGAGE_KEY}[ \t]*=[ \t]*{sandbox}[ \t]*([;,].*|%3[Bb].*)?")
}

/// An RE2 regex (Envoy's `safe_regex`, full match) that matches the shape of a sandbox name
/// ([`SandboxName::new`]: a DNS label): the sidecars turn an `x-iac-sandbox` header holding one
/// into the baggage member `iac-sandbox=<name>` on the way into the app, so an app that only
/// propagates `baggage` (OpenTelemetry) carries the choice to the services it calls. Anything
/// else in the header (a `,`, `;`, `=`, space…) is never copied into `baggage`. The length is
/// not bounded: Envoy refuses a bounded repetition as too big an RE2 program, and a name longer
/// than any sandbox's names no copy, so it routes to the baseline like any unknown name.
pub fn sandbox_name_regex() -> String {
    "[a-z0-9]([a-z0-9-]*[a-z0-9])?".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    #[test]
    fn copy_names_round_trip_and_name_the_identity() {
        let sb = SandboxName::new("feat").unwrap();
        let c = copy_name(&svc("cart"), &sb).unwrap();
        assert_eq!(c.as_str(), "cart--sb-feat");
        let back = parse_copy(c.as_str()).unwrap();
        assert_eq!(back.of, svc("cart"));
        assert_eq!(back.sandbox, sb);
        assert_eq!(identity_path(c.as_str()), "cart/sandbox/feat");
        assert_eq!(identity_path("cart"), "cart");
        assert!(parse_copy("cart").is_none());
        assert!(parse_copy("cart-sb-feat").is_none());
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let e = SandboxName::new("Feat").unwrap_err().to_string();
        assert!(e.contains("Feat") && e.contains("a-z"), "{e}");
        assert!(SandboxName::new(&"x".repeat(MAX_SANDBOX_NAME)).is_ok());
        let e = SandboxName::new(&"x".repeat(MAX_SANDBOX_NAME + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandbox copy"), "{e}");
        let long = svc(&"s".repeat(40));
        let e = copy_name(&long, &SandboxName::new(&"f".repeat(30)).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandbox ffff") && e.contains("63"), "{e}");
        assert!(check_baseline_name(&svc("cart--sb-x")).is_err());
        assert!(check_baseline_name(&svc("cart--x")).is_ok());
    }

    #[test]
    fn the_baggage_regex_matches_the_member_anywhere_and_nothing_else() {
        // Envoy's safe_regex is RE2 with a full match; the regex crate speaks the same syntax.
        let re = regex::Regex::new(&format!(
            "^(?:{})$",
            baggage_regex(&SandboxName::new("feat").unwrap())
        ))
        .unwrap();
        for yes in [
            "iac-sandbox=feat",
            "iac-sandbox = feat",
            "userId=alice,iac-sandbox=feat",
            "userId=alice, iac-sandbox=feat ,serverNode=DF%2028",
            "iac-sandbox=feat;ttl=10,other=1",
            "a=1,b=2,iac-sandbox=feat;prop",
            "iac-sandbox=other,iac-sandbox=feat",
            "userId=alice,iac-sandbox=feat%3Bp%3D1",
            "iac-sandbox=feat%3bp",
        ] {
            assert!(re.is_match(yes), "{yes:?} should pick sandbox feat");
        }
        for no in [
            "",
            "iac-sandbox=feature",
            "iac-sandbox=fea",
            "x-iac-sandbox=feat",
            "my-iac-sandbox=feat",
            "iac-sandbox=other",
            "userId=feat",
            "a=iac-sandbox=feat",
            "iac-sandbox=feat-2,a=1",
            "other=1;iac-sandbox=feat",
            "iac-sandbox=feat%3",
            "iac-sandbox=feat%2Cx",
        ] {
            assert!(!re.is_match(no), "{no:?} must not pick sandbox feat");
        }
    }

    #[test]
    fn the_name_regex_accepts_the_shape_of_sandbox_names_only() {
        let re = regex::Regex::new(&format!("^(?:{})$", sandbox_name_regex())).unwrap();
        let longest = "x".repeat(MAX_SANDBOX_NAME);
        for s in [
            "feat",
            "a",
            "f1",
            "feat-2",
            "0",
            &longest,
            "",
            "-feat",
            "feat-",
            "Feat",
            "feat,x=1",
            "feat;p",
            "feat x",
            "iac-sandbox=feat",
            "feat\tx",
        ] {
            assert_eq!(
                re.is_match(s),
                SandboxName::new(s).is_ok(),
                "{s:?}: the regex and SandboxName::new disagree"
            );
        }
        // Only the length is not checked (see the function): such a name matches no copy.
        assert!(re.is_match(&"x".repeat(MAX_SANDBOX_NAME + 1)));
    }
}
