//! What the daemon remembers about its sandboxes across restarts, beside the pinned maps and
//! links: each sandbox's spec (name, cgroup, netns, policy options, secrets), id and cgroup id.
//! Written atomically after every change; read by the next daemon, which adopts what is
//! pinned.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what this daemon writes.
    #[error("{}: not a gateway state file: {source}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// One sandbox, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its id (part of every map key).
    pub id: u32,
    /// Its cgroup's id when it was added (a cgroup made again at the same path is another).
    pub cgroup_id: u64,
    /// Its spec, in canonical form (`gateway_proto::sandbox_spec::SandboxSpec`'s Display).
    pub spec: String,
}

/// The state file of one daemon (one pin directory).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file `sandboxes.json` in `dir` (created when missing, mode 0700).
    ///
    /// # Errors
    /// [`StateError::Io`] when the directory cannot be made.
    pub fn in_dir(dir: &Path) -> Result<StateFile, StateError> {
        create_private_dir(dir)?;
        Ok(StateFile {
            path: dir.join("sandboxes.json"),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records; none when there is no file.
    ///
    /// # Errors
    /// [`StateError`] when it cannot be read or parsed.
    pub fn load(&self) -> Result<Vec<Record>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the records (a new file renamed over the old one, so a crash leaves either).
    ///
    /// # Errors
    /// [`StateError::Io`] when the file cannot be written.
    pub fn save(&self, records: &[Record]) -> Result<(), StateError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { op, path, source }
        };
        let temp = self.path.with_extension("json.new");
        let text = serde_json::to_string_pretty(records).expect("records always serialize");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io("create", &temp))?;
        file.write_all(text.as_bytes())
            .map_err(io("write", &temp))?;
        file.sync_all().map_err(io("sync", &temp))?;
        fs::rename(&temp, &self.path).map_err(io("replace", &self.path))
    }

    /// Removes the file (`gateway down`).
    ///
    /// # Errors
    /// [`StateError::Io`] when it exists but cannot be removed.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                op: "remove",
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Creates `dir` (and parents) readable by root only.
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::in_dir(&dir.path().join("run")).unwrap();
        assert_eq!(state.load().unwrap(), vec![]);
        let records = vec![Record {
            id: 3,
            cgroup_id: 77,
            spec: "/sys/fs/cgroup/a,name=a,allow-tcp-port=22".into(),
        }];
        state.save(&records).unwrap();
        assert_eq!(state.load().unwrap(), records);
        state.remove().unwrap();
        assert_eq!(state.load().unwrap(), vec![]);
        state.remove().unwrap();
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::in_dir(dir.path()).unwrap();
        std::fs::write(state.path(), "not json").unwrap();
        let error = state.load().unwrap_err().to_string();
        assert!(error.contains("not a gateway state file"), "{error}");
    }
}
