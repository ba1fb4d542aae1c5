//! `--user` resolution: `NAME`, `UID`, `NAME:GROUP` or `UID:GID` against the container's own
//! `/etc/passwd` and `/etc/group`, parsed directly (a static binary has no working NSS).
//!
//! Rules (close to Docker's `--user`):
//! * a name must exist in `/etc/passwd`; its uid, primary gid, home directory are used;
//! * a numeric uid is used as is; its primary gid and home come from `/etc/passwd` when it has an
//!   entry, otherwise gid = uid (never silently the root group) and no home;
//! * `:GROUP` overrides the primary group (a name must exist in `/etc/group`);
//! * supplementary groups are the primary gid plus every `/etc/group` entry listing the user's name,
//!   so root's supplementary groups never leak into the child.

use std::fmt;

/// Who the child runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The uid the entry runs as.
    pub uid: u32,
    /// The primary gid (the user's from `/etc/passwd`, or the `:GROUP` given).
    pub gid: u32,
    /// Supplementary groups, primary gid first, no duplicates.
    pub groups: Vec<u32>,
    /// Login name, when `/etc/passwd` knows the uid.
    pub name: Option<String>,
    /// Home directory, when `/etc/passwd` knows the uid.
    pub home: Option<String>,
}

/// Why `--user` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// `--user` was given empty.
    Empty,
    /// A name not in `/etc/passwd` (the value given).
    UnknownUser(String),
    /// A group name not in `/etc/group` (the value given).
    UnknownGroup(String),
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::Empty => write!(
                f,
                "--user is empty: expected NAME, UID, NAME:GROUP or UID:GID"
            ),
            UserError::UnknownUser(u) => write!(
                f,
                "--user {u:?}: no such user in /etc/passwd (expected a name listed there, or a numeric UID)"
            ),
            UserError::UnknownGroup(g) => write!(
                f,
                "--user group {g:?}: no such group in /etc/group (expected a name listed there, or a numeric GID)"
            ),
        }
    }
}

impl std::error::Error for UserError {}

#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:passwd:uid:gid:gecos:home:shell`; malformed lines and comments are skipped.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0].is_empty() {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `name:passwd:gid:member,member`; yields (name, gid, members).
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0].is_empty() {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` against the given file contents (empty strings when the files are absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Empty);
    }
    let (uid, entry) = if is_numeric(user_part) {
        let uid: u32 = user_part
            .parse()
            .map_err(|_| UserError::UnknownUser(user_part.to_owned()))?;
        (uid, passwd_entries(passwd).find(|e| e.uid == uid))
    } else {
        let e = passwd_entries(passwd)
            .find(|e| e.name == user_part)
            .ok_or_else(|| UserError::UnknownUser(user_part.to_owned()))?;
        (e.uid, Some(e))
    };
    let gid = match group_part {
        Some(g) if is_numeric(g) => g
            .parse()
            .map_err(|_| UserError::UnknownGroup(g.to_owned()))?,
        Some(g) => group_entries(group)
            .find(|(name, _, _)| *name == g)
            .map(|(_, gid, _)| gid)
            .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        None => entry.as_ref().map_or(uid, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        name: entry.as_ref().map(|e| e.name.to_owned()),
        home: entry
            .as_ref()
            .filter(|e| !e.home.is_empty())
            .map(|e| e.home.to_owned()),
    })
}

/// Reads `/etc/passwd` and `/etc/group` (a missing file counts as empty) and resolves `spec`.
pub fn resolve_from_system(spec: &str) -> Result<ResolvedUser, UserError> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    resolve(spec, &read("/etc/passwd"), &read("/etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1000:1000:App User,,,:/home/app:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
users:x:100:app,other
app:x:1000:
audio:x:29:app
nogroup:x:65534:
";

    #[test]
    fn by_name() {
        let u = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 100, 29],
                name: Some("app".into()),
                home: Some("/home/app".into()),
            }
        );
    }

    #[test]
    fn by_known_uid_takes_primary_group_from_passwd() {
        let u = resolve("65534", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        assert_eq!(u.name.as_deref(), Some("nobody"));
        assert_eq!(u.groups, vec![65534]);
    }

    #[test]
    fn by_unknown_uid_uses_uid_as_gid() {
        let u = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (4242, 4242, vec![4242]));
        assert_eq!((u.name, u.home), (None, None));
    }

    #[test]
    fn explicit_group_numeric_or_named() {
        let u = resolve("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 7));
        let u = resolve("app:users", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 100));
        assert_eq!(u.groups, vec![100, 29]);
    }

    #[test]
    fn errors_name_the_input() {
        let e = resolve("ghost", PASSWD, GROUP).unwrap_err();
        assert_eq!(e, UserError::UnknownUser("ghost".into()));
        assert!(e.to_string().contains("\"ghost\""));
        let e = resolve("app:ghosts", PASSWD, GROUP).unwrap_err();
        assert!(e.to_string().contains("\"ghosts\"") && e.to_string().contains("/etc/group"));
        assert_eq!(resolve("", PASSWD, GROUP).unwrap_err(), UserError::Empty);
        assert_eq!(
            resolve("app:", PASSWD, GROUP).unwrap_err(),
            UserError::Empty
        );
        // Too large for a uid_t.
        assert!(matches!(
            resolve("99999999999", PASSWD, GROUP),
            Err(UserError::UnknownUser(_))
        ));
    }
}
