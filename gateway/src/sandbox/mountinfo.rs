//! The mount table of this process (`/proc/self/mountinfo`), parsed once for every user: finding
//! the cgroup2 mount, and the kernel-interface mounts `gateway exec` makes read-only.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where the kernel describes this process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo: where a filesystem is mounted and of which type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount point, unescaped.
    pub point: PathBuf,
    /// The filesystem type (`cgroup2`, `sysfs`, ...).
    pub fstype: String,
}

/// Reads and parses [`MOUNTINFO`].
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&fs::read_to_string(Path::new(MOUNTINFO))?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - type source ...
            let (left, right) = line.split_once(" - ")?;
            Some(Mount {
                point: unescape_octal(left.split_whitespace().nth(4)?),
                fstype: right.split_whitespace().next()?.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_types() {
        let text = "\
24 29 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
garbage
";
        assert_eq!(
            parse(text),
            [
                Mount {
                    point: "/sys".into(),
                    fstype: "sysfs".into()
                },
                Mount {
                    point: "/sys/fs/cgroup/unified".into(),
                    fstype: "cgroup2".into()
                },
            ]
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let line = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse(line)[0].point, PathBuf::from("/mnt/with space"));
    }
}
