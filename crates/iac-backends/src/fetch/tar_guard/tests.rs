//! Unit tests of [`TarGuard`]: caps at and over the limit, byte-at-a-time reads, base-256 and
//! pax-overridden sizes, GNU sparse extension blocks, and ordinary archives passing unchanged.

use std::io::{self, Read};

use super::*;

/// One tar header of `kind` for `name` whose size field says `size`, checksummed.
fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Appends an entry: header (size field = `data.len()`) then the padded data.
fn entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8]) {
    out.extend_from_slice(header(name, kind, data.len() as u64).as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

fn end(mut out: Vec<u8>) -> Vec<u8> {
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// A pax record set holding `key=value` records.
fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

/// Reads `input` through a guard (the inner reader and the caller both move `step` bytes at a
/// time when `step` is set).
fn through(input: &[u8], step: Option<usize>) -> io::Result<Vec<u8>> {
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.1).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let step_n = step.unwrap_or(usize::MAX);
    let mut g = TarGuard::new(Trickle(input, step_n));
    let mut out = Vec::new();
    let mut buf = vec![0u8; step.unwrap_or(8192)];
    loop {
        let n = g.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn refusal(e: io::Error) -> HeaderTooLarge {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<HeaderTooLarge>())
        .unwrap_or_else(|| panic!("expected a HeaderTooLarge, got {e}"))
        .clone()
}

/// The names and contents of the archive's members as the `tar` crate reads them.
fn members(r: impl Read) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((name, data));
    }
    Ok(out)
}

#[test]
fn long_names_and_links_at_the_cap_pass_and_one_byte_more_fails() {
    for kind in [tar::EntryType::GNULongName, tar::EntryType::GNULongLink] {
        let mut ok = Vec::new();
        entry(&mut ok, "././@LongLink", kind, &[b'n'; 4096]);
        entry(&mut ok, "x", tar::EntryType::Regular, b"data");
        let ok = end(ok);
        assert_eq!(through(&ok, None).unwrap(), ok, "{kind:?} at the cap");

        let mut over = Vec::new();
        let mut name = vec![b'q'; 4097];
        name[..5].copy_from_slice(b"\x1b[2J\n");
        entry(&mut over, "././@LongLink", kind, &name);
        entry(&mut over, "x", tar::EntryType::Regular, b"data");
        let e = refusal(through(&end(over), None).unwrap_err());
        assert_eq!((e.size, e.cap), (4097, MAX_LONG_NAME));
        assert_eq!(e.entry, format!("\x1b[2J\n{}…(cut)", "q".repeat(195)));
        let shown = e.to_string();
        assert!(
            shown.contains("\\u{1b}[2J\\n") && !shown.contains('\x1b'),
            "escaped: {shown}"
        );
        let what = if kind == tar::EntryType::GNULongName {
            "GNU long-name"
        } else {
            "GNU long-link"
        };
        assert!(shown.starts_with(what), "{shown}");
    }
}

#[test]
fn pax_headers_at_the_cap_pass_and_one_byte_more_fails() {
    for kind in [tar::EntryType::XHeader, tar::EntryType::XGlobalHeader] {
        let mut filler = pax(&[("comment", &"c".repeat(65_000))]);
        filler.resize(65_536, b'\n');
        let mut ok = Vec::new();
        entry(&mut ok, "PaxHeaders/x", kind, &filler);
        entry(&mut ok, "x", tar::EntryType::Regular, b"data");
        let ok = end(ok);
        assert_eq!(through(&ok, None).unwrap(), ok, "{kind:?} at the cap");

        filler.push(b'\n');
        let mut over = Vec::new();
        entry(&mut over, "PaxHeaders/x", kind, &filler);
        let e = refusal(through(&end(over), None).unwrap_err());
        assert_eq!((e.size, e.cap), (65_537, MAX_PAX_HEADER));
        assert_eq!(e.entry, "PaxHeaders/x");
    }
}

#[test]
fn one_byte_reads_see_the_same_bytes_and_the_same_refusal() {
    let mut ok = Vec::new();
    entry(
        &mut ok,
        "././@LongLink",
        tar::EntryType::GNULongName,
        &[b'n'; 700],
    );
    entry(&mut ok, "x", tar::EntryType::Regular, &[7u8; 1500]);
    entry(&mut ok, "y", tar::EntryType::Regular, b"");
    let ok = end(ok);
    assert_eq!(through(&ok, Some(1)).unwrap(), ok);
    assert_eq!(through(&ok, Some(7)).unwrap(), ok);

    let mut bad = ok[..ok.len() - 1024].to_vec();
    entry(
        &mut bad,
        "././@LongLink",
        tar::EntryType::GNULongLink,
        &[b'k'; 5000],
    );
    let e = refusal(through(&end(bad), Some(1)).unwrap_err());
    assert_eq!(e.size, 5000);
    assert_eq!(e.entry, format!("{}…(cut)", "k".repeat(200)));
}

#[test]
fn base256_sizes_are_followed_and_capped() {
    // A member whose size field is base-256 (as GNU tar writes sizes ≥ 8 GiB).
    let data = vec![3u8; 1300];
    let mut h = header("big", tar::EntryType::Regular, 0);
    let size = &mut h.as_old_mut().size;
    size.fill(0);
    size[0] = 0x80;
    size[4..].copy_from_slice(&(data.len() as u64).to_be_bytes());
    h.set_cksum();
    assert_eq!(h.entry_size().unwrap(), 1300, "the tar crate reads it so");
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&data);
    pad(&mut tar);
    let ok = end(tar.clone());
    assert_eq!(through(&ok, Some(5)).unwrap(), ok);
    assert_eq!(
        members(TarGuard::new(&ok[..])).unwrap(),
        vec![("big".to_string(), data)]
    );

    // Still aligned after it: an oversized long name behind it is caught.
    entry(
        &mut tar,
        "././@LongLink",
        tar::EntryType::GNULongName,
        &[b'z'; 4100],
    );
    assert_eq!(refusal(through(&end(tar), None).unwrap_err()).size, 4100);

    // A long name whose base-256 size claims 850 MB is refused by its header alone.
    let mut h = header("././@LongLink", tar::EntryType::GNULongName, 0);
    let size = &mut h.as_old_mut().size;
    size.fill(0);
    size[0] = 0x80;
    size[4..].copy_from_slice(&850_000_000u64.to_be_bytes());
    h.set_cksum();
    let mut bomb = h.as_bytes().to_vec();
    bomb.extend_from_slice(b"/etc/evil");
    let e = refusal(through(&bomb, None).unwrap_err());
    assert_eq!((e.size, e.entry.as_str()), (850_000_000, "/etc/evil"));
}

#[test]
fn a_pax_size_record_overrides_the_next_members_size() {
    // The member's own size field says 0; the pax header says 1000, which the tar crate uses.
    let data = vec![9u8; 1000];
    let mut tar = Vec::new();
    entry(
        &mut tar,
        "PaxHeaders/f",
        tar::EntryType::XHeader,
        &pax(&[("size", "1000")]),
    );
    tar.extend_from_slice(header("f", tar::EntryType::Regular, 0).as_bytes());
    tar.extend_from_slice(&data);
    pad(&mut tar);
    let ok = end(tar.clone());
    assert_eq!(through(&ok, Some(3)).unwrap(), ok);
    assert_eq!(
        members(TarGuard::new(&ok[..])).unwrap(),
        vec![("f".to_string(), data)]
    );
    // Aligned after it: the data (which looks like nothing) is skipped, the next header checked.
    entry(
        &mut tar,
        "././@LongLink",
        tar::EntryType::GNULongName,
        &[b'p'; 4097],
    );
    assert_eq!(refusal(through(&end(tar), None).unwrap_err()).size, 4097);
}

/// A GNU sparse member with 5 data blocks of 512 bytes: 4 described in its header, the fifth in
/// one extension block, as GNU tar 1.x `--sparse` (old GNU format) writes it.
fn sparse_member() -> (Vec<u8>, Vec<u8>) {
    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{v:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
        field[s.len()] = 0;
    }
    let mut h = header("sparse", tar::EntryType::GNUSparse, 5 * 512);
    let gnu = h.as_gnu_mut().unwrap();
    for (i, s) in gnu.sparse.iter_mut().enumerate() {
        octal(&mut s.offset, i as u64 * 1024);
        octal(&mut s.numbytes, 512);
    }
    octal(&mut gnu.realsize, 4 * 1024 + 512);
    gnu.isextended[0] = 1;
    h.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    octal(&mut ext.sparse[0].offset, 4 * 1024);
    octal(&mut ext.sparse[0].numbytes, 512);
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(ext.as_bytes());
    let mut expected = Vec::new();
    for i in 0..5u8 {
        out.extend(std::iter::repeat_n(b'a' + i, 512));
        expected.extend(std::iter::repeat_n(b'a' + i, 512));
        if i < 4 {
            expected.extend(std::iter::repeat_n(0, 512));
        }
    }
    (out, expected)
}

#[test]
fn gnu_sparse_extension_blocks_are_skipped_like_the_tar_crate_does() {
    let (mut tar, expected) = sparse_member();
    entry(&mut tar, "after", tar::EntryType::Regular, b"tail");
    let ok = end(tar.clone());
    assert_eq!(through(&ok, Some(1)).unwrap(), ok);
    assert_eq!(
        members(TarGuard::new(&ok[..])).unwrap(),
        vec![
            ("sparse".to_string(), expected),
            ("after".to_string(), b"tail".to_vec())
        ]
    );
    entry(
        &mut tar,
        "././@LongLink",
        tar::EntryType::GNULongLink,
        &[b's'; 9000],
    );
    assert_eq!(refusal(through(&end(tar), None).unwrap_err()).size, 9000);
}

#[test]
fn ordinary_archives_pass_unchanged_byte_for_byte() {
    // What tar::Builder writes: ustar/GNU headers, a GNU long name for a 150-char path, a
    // pax header, a directory, a symlink and files of assorted sizes; then `git archive`'s
    // pax global header shape.
    let mut b = tar::Builder::new(Vec::new());
    let records = pax(&[("mtime", "1.5"), ("comment", "hi")]);
    let x = header(
        "PaxHeaders/top",
        tar::EntryType::XHeader,
        records.len() as u64,
    );
    b.append(&x, &records[..]).unwrap();
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "top/", io::empty()).unwrap();
    for (i, len) in [0usize, 1, 511, 512, 513, 70_000].into_iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(len as u64);
        let data = vec![i as u8; len];
        b.append_data(&mut h, format!("top/f{i}"), &data[..])
            .unwrap();
    }
    let long = format!("top/{}", "d".repeat(150));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(3);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "top/link", "f1").unwrap();
    let tar = b.into_inner().unwrap();
    assert!(tar.chunks(512).any(|c| c[156] == b'L'), "has a long name");
    assert!(tar.chunks(512).any(|c| c[156] == b'x'), "has a pax header");
    for step in [None, Some(1), Some(100), Some(512)] {
        assert_eq!(through(&tar, step).unwrap(), tar, "step {step:?}");
    }
    let plain = members(&tar[..]).unwrap();
    assert_eq!(members(TarGuard::new(&tar[..])).unwrap(), plain);
    assert!(plain.iter().any(|(n, _)| n == &long));

    let mut git = Vec::new();
    entry(
        &mut git,
        "pax_global_header",
        tar::EntryType::XGlobalHeader,
        &pax(&[("comment", &"ab".repeat(20))]),
    );
    entry(
        &mut git,
        "top/main.py",
        tar::EntryType::Regular,
        b"print(1)\n",
    );
    let git = end(git);
    assert_eq!(through(&git, Some(1)).unwrap(), git);
}

#[test]
fn a_truncated_stream_is_handed_on_for_the_tar_crate_to_report() {
    let mut tar = Vec::new();
    entry(&mut tar, "x", tar::EntryType::Regular, &[1u8; 2000]);
    let cut = &tar[..700];
    assert_eq!(through(cut, None).unwrap(), cut);
    assert_eq!(through(&tar[..300], Some(1)).unwrap(), &tar[..300]);
    assert!(members(TarGuard::new(cut)).is_err());
}
