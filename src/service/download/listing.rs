//! The `LIST` reply: every servable regular file under the root, in order, with its size.
//!
//! Only what `GET` would serve is listed: regular files reached without following symlinks, with
//! UTF-8 names free of control characters (a newline in a name would break the line format), and
//! hidden entries only with `--serve-hidden`. Entries are ordered component by component (`a/z`
//! before `a.txt`, as a tree is read), and the walk stops at `--list-max` files, so a huge tree
//! costs a bounded amount of work and memory.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Renders `OK <n>\n` followed by `<size> <name>\n` per file.
pub fn render(root: &Path, max: usize, serve_hidden: bool) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut count = 0;
    walk(root, "", max, serve_hidden, &mut lines, &mut count);
    let mut reply = format!("OK {count}\n").into_bytes();
    reply.extend_from_slice(&lines);
    reply
}

/// Lists `dir` (whose name relative to the root is `prefix`) into `lines`, depth first.
fn walk(
    dir: &Path,
    prefix: &str,
    max: usize,
    hidden: bool,
    lines: &mut Vec<u8>,
    count: &mut usize,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return; // unreadable directories are simply not listed
    };
    let mut entries: Vec<(String, fs::Metadata)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let listable =
                !name.chars().any(char::is_control) && (hidden || !name.starts_with('.'));
            // `DirEntry::metadata` does not follow symlinks: they are left out.
            Some((name, entry.metadata().ok()?)).filter(|_| listable)
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, metadata) in entries {
        if *count >= max {
            return;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if metadata.is_dir() {
            walk(&dir.join(&name), &path, max, hidden, lines, count);
        } else if metadata.is_file() {
            // Writing to a Vec cannot fail.
            let _ = writeln!(lines, "{} {path}", metadata.len());
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_regular_files_in_tree_order_with_sizes() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("b.txt"), b"12345").unwrap();
        fs::write(root.path().join("a.txt"), b"").unwrap();
        fs::create_dir(root.path().join("a")).unwrap();
        fs::write(root.path().join("a/z.bin"), b"xy").unwrap();
        fs::write(root.path().join(".secret"), b"no").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("link")).unwrap();

        let reply = String::from_utf8(render(root.path(), 100, false)).unwrap();
        assert_eq!(reply, "OK 3\n2 a/z.bin\n0 a.txt\n5 b.txt\n");

        let with_hidden = String::from_utf8(render(root.path(), 100, true)).unwrap();
        assert!(with_hidden.starts_with("OK 4\n2 .secret\n"));
    }

    #[test]
    fn stops_at_the_limit() {
        let root = tempfile::tempdir().unwrap();
        for i in 0..10 {
            fs::write(root.path().join(format!("f{i}")), b"x").unwrap();
        }
        let reply = String::from_utf8(render(root.path(), 3, false)).unwrap();
        assert_eq!(reply, "OK 3\n1 f0\n1 f1\n1 f2\n");
    }
}
