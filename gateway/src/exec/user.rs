//! Who the command of `gateway exec` runs as: the user given with `--user`, else the user who
//! invoked sudo (`SUDO_UID`/`SUDO_GID`), else root. Resolved in the parent from the passwd and
//! group databases, so the helper only ever sees numbers.

use std::{ffi::CString, fmt, path::PathBuf, str::FromStr};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// Errors finding the user the command runs as.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// `--user` names a user the passwd database does not know.
    #[error("--user: no user named {name:?}")]
    UnknownUser { name: String },
    /// `--user USER:GROUP` names a group the group database does not know.
    #[error("--user: no group named {name:?}")]
    UnknownGroup { name: String },
    /// A numeric uid without a passwd entry, and no group given to pair it with.
    #[error(
        "uid {uid} has no passwd entry, so it has no primary group: give one (--user {uid}:GID)"
    )]
    NoGroup { uid: u32 },
    /// `SUDO_UID` or `SUDO_GID` is not a number.
    #[error("{var}={value:?} is not a numeric id")]
    BadSudoId { var: &'static str, value: String },
    /// A user or group database lookup failed.
    #[error("looking up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: nix::Error,
    },
}

/// A user or a group, by name or by number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A name from the passwd or group database.
    Name(String),
    /// A numeric id.
    Id(u32),
}

impl Principal {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty user or group".into());
        }
        Ok(match text.parse() {
            Ok(id) => Principal::Id(id),
            Err(_) => Principal::Name(text.into()),
        })
    }
}

/// `--user USER[:GROUP]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    /// The user.
    pub user: Principal,
    /// The primary group, instead of the user's own.
    pub group: Option<Principal>,
}

impl FromStr for UserSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(Principal::parse(group)?)),
            None => (text, None),
        };
        Ok(UserSpec {
            user: Principal::parse(user)?,
            group,
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Name(name) => f.write_str(name),
            Principal::Id(id) => id.fmt(f),
        }
    }
}

/// The resolved identity: ids for the helper, names for the command's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<Gid>,
    /// `USER` and `LOGNAME` (the uid as text when it has no passwd entry).
    pub name: String,
    /// `HOME` (`/` when the uid has no passwd entry).
    pub home: PathBuf,
}

/// The sudo variables of this process's environment.
#[derive(Clone, Debug, Default)]
pub struct SudoEnv {
    /// `SUDO_UID`.
    pub uid: Option<String>,
    /// `SUDO_GID`.
    pub gid: Option<String>,
}

impl SudoEnv {
    /// Reads `SUDO_UID` and `SUDO_GID` (sudo sets both to the invoking user's ids).
    pub fn from_env() -> Self {
        SudoEnv {
            uid: std::env::var("SUDO_UID").ok(),
            gid: std::env::var("SUDO_GID").ok(),
        }
    }
}

impl Identity {
    /// `--user` when given, else the sudo invoker, else root. Looks up the user and group
    /// databases (possibly over the network with NSS): call it off the async runtime.
    pub fn resolve(spec: Option<&UserSpec>, sudo: &SudoEnv) -> Result<Self, UserError> {
        match (spec, &sudo.uid) {
            (Some(spec), _) => Self::from_spec(spec),
            (None, Some(uid)) => {
                let uid = sudo_id("SUDO_UID", uid)?;
                let gid = sudo
                    .gid
                    .as_deref()
                    .map(|gid| sudo_id("SUDO_GID", gid))
                    .transpose()?;
                Self::from_ids(Uid::from_raw(uid), gid.map(Gid::from_raw))
            }
            (None, None) => Self::from_ids(Uid::from_raw(0), None),
        }
    }

    fn from_spec(spec: &UserSpec) -> Result<Self, UserError> {
        let gid = spec.group.as_ref().map(group_id).transpose()?;
        match &spec.user {
            Principal::Id(uid) => Self::from_ids(Uid::from_raw(*uid), gid),
            Principal::Name(name) => {
                let user = User::from_name(name)
                    .map_err(|source| UserError::Lookup {
                        what: format!("user {name:?}"),
                        source,
                    })?
                    .ok_or_else(|| UserError::UnknownUser { name: name.clone() })?;
                Self::from_user(user, gid)
            }
        }
    }

    /// `uid` with its passwd entry when it has one; `gid` overrides the primary group.
    fn from_ids(uid: Uid, gid: Option<Gid>) -> Result<Self, UserError> {
        let user = User::from_uid(uid).map_err(|source| UserError::Lookup {
            what: format!("uid {uid}"),
            source,
        })?;
        match (user, gid) {
            (Some(user), gid) => Self::from_user(user, gid),
            (None, Some(gid)) => Ok(Identity {
                uid,
                gid,
                groups: vec![gid],
                name: uid.to_string(),
                home: PathBuf::from("/"),
            }),
            (None, None) => Err(UserError::NoGroup { uid: uid.as_raw() }),
        }
    }

    fn from_user(user: User, gid: Option<Gid>) -> Result<Self, UserError> {
        let gid = gid.unwrap_or(user.gid);
        let groups = supplementary_groups(&user.name, gid)?;
        Ok(Identity {
            uid: user.uid,
            gid,
            groups,
            name: user.name,
            home: user.dir,
        })
    }
}

fn sudo_id(var: &'static str, value: &str) -> Result<u32, UserError> {
    value.trim().parse().map_err(|_| UserError::BadSudoId {
        var,
        value: value.into(),
    })
}

fn group_id(group: &Principal) -> Result<Gid, UserError> {
    match group {
        Principal::Id(gid) => Ok(Gid::from_raw(*gid)),
        Principal::Name(name) => Group::from_name(name)
            .map_err(|source| UserError::Lookup {
                what: format!("group {name:?}"),
                source,
            })?
            .map(|group| group.gid)
            .ok_or_else(|| UserError::UnknownGroup { name: name.clone() }),
    }
}

/// The groups `name` belongs to, with `gid` among them (what login and sudo give a user).
fn supplementary_groups(name: &str, gid: Gid) -> Result<Vec<Gid>, UserError> {
    let lookup = |source| UserError::Lookup {
        what: format!("the groups of {name:?}"),
        source,
    };
    // A passwd name never holds NUL; treat one as a failed lookup rather than panicking.
    let cname = CString::new(name).map_err(|_| lookup(nix::Error::EINVAL))?;
    getgrouplist(&cname, gid).map_err(lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_group_by_name_or_number() {
        assert_eq!(
            "nobody".parse::<UserSpec>(),
            Ok(UserSpec {
                user: Principal::Name("nobody".into()),
                group: None
            })
        );
        assert_eq!(
            "65534:nogroup".parse::<UserSpec>(),
            Ok(UserSpec {
                user: Principal::Id(65534),
                group: Some(Principal::Name("nogroup".into()))
            })
        );
        assert!("".parse::<UserSpec>().is_err());
        assert!("nobody:".parse::<UserSpec>().is_err());
        assert!(":0".parse::<UserSpec>().is_err());
    }

    #[test]
    fn root_without_sudo_or_user() {
        let identity =
            Identity::resolve(None, &SudoEnv::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(identity.uid.is_root());
        assert_eq!(identity.name, "root");
    }

    #[test]
    fn sudo_ids_name_the_invoker() {
        let sudo = SudoEnv {
            uid: Some("65534".into()),
            gid: Some("65534".into()),
        };
        let identity = Identity::resolve(None, &sudo).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(identity.uid, Uid::from_raw(65534));
        assert_eq!(identity.gid, Gid::from_raw(65534));
        assert!(identity.groups.contains(&Gid::from_raw(65534)));
        let bad = SudoEnv {
            uid: Some("me".into()),
            gid: None,
        };
        assert!(matches!(
            Identity::resolve(None, &bad),
            Err(UserError::BadSudoId {
                var: "SUDO_UID",
                ..
            })
        ));
    }

    #[test]
    fn a_uid_without_an_entry_needs_a_group() {
        let spec: UserSpec = "4000000000".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            Identity::resolve(Some(&spec), &SudoEnv::default()),
            Err(UserError::NoGroup { uid: 4_000_000_000 })
        ));
        let spec: UserSpec = "4000000000:4000000000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let identity =
            Identity::resolve(Some(&spec), &SudoEnv::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(identity.home, PathBuf::from("/"));
        assert_eq!(identity.groups, [Gid::from_raw(4_000_000_000)]);
    }
}
