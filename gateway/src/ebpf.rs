//! The eBPF side as the daemon sees it: loading the embedded programs, attaching them to sandbox
//! cgroups, pinning maps and links for operators, and reading and writing the maps.

pub mod pins;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps,
        links::{FdLink, LinkError},
    },
};
use gateway_common::{ClientKey, Counter, MAX_PORTS, OrigDstEntry, SandboxConf, map_names};

pub use self::pins::PinDir;
use crate::sandbox::{SandboxId, cgroup::Cgroup};

/// The compiled eBPF object, built from gateway-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Program names in the object, and the short names their pinned links get.
const CONNECT4: &str = "gateway_connect4";
const CONNECT6: &str = "gateway_connect6";
const SOCK_OPS: &str = "gateway_sock_ops";

/// Errors loading, attaching or using the eBPF programs and maps.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the eBPF object: {source}")]
    Object {
        #[source]
        source: aya::EbpfError,
    },
    /// A program the object must contain is missing or of the wrong type.
    #[error("the eBPF object has no usable program `{name}`")]
    MissingProgram { name: &'static str },
    /// A map the object must contain is missing or of the wrong type.
    #[error("the eBPF object has no usable map `{name}`: {source}")]
    BadMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The kernel rejected a program (the message carries the verifier log).
    #[error("the kernel rejected program `{name}`: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Attaching a program to a sandbox cgroup failed.
    #[error("attaching `{name}` to cgroup {cgroup}: {source}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    /// An attached program's link could not be taken over.
    #[error("taking the link of `{name}` on cgroup {cgroup}: {source}")]
    Link {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: LinkError,
    },
    /// A map operation failed.
    #[error("{op} map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Pinning under bpffs failed.
    #[error(transparent)]
    Pin(#[from] pins::PinError),
}

/// The loaded programs and their maps.
pub struct Programs {
    ebpf: Ebpf,
    sandboxes: HashMap<MapData, u64, SandboxConf>,
    orig_dst: OrigDstTable,
    counters: PerCpuArray<MapData, u64>,
    pins: Option<PinDir>,
}

impl fmt::Debug for Programs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Programs")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl Programs {
    /// Loads and verifies the programs; with `pins`, pins every map there for operators.
    pub fn load(pins: Option<PinDir>) -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| EbpfError::Object { source })?;
        for name in [CONNECT4, CONNECT6] {
            let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| EbpfError::Load { name, source })?;
        }
        let sock_ops: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS)?;
        sock_ops.load().map_err(|source| EbpfError::Load {
            name: SOCK_OPS,
            source,
        })?;

        let sandboxes = take_map(&mut ebpf, map_names::SANDBOXES, pins.as_ref())?;
        let orig_dst = take_map(&mut ebpf, map_names::ORIG_DST, pins.as_ref())?;
        let counters = take_map(&mut ebpf, map_names::COUNTERS, pins.as_ref())?;
        if let Some(pins) = &pins {
            // Not used by the daemon, pinned so operators can see connects in flight.
            let map = ebpf
                .map(map_names::PENDING)
                .ok_or_else(|| missing_map(map_names::PENDING))?;
            pins.pin_map(map_names::PENDING, map)?;
        }
        Ok(Programs {
            ebpf,
            sandboxes: HashMap::try_from(sandboxes).map_err(|source| EbpfError::BadMap {
                name: map_names::SANDBOXES,
                source,
            })?,
            orig_dst: OrigDstTable(Arc::new(Mutex::new(HashMap::try_from(orig_dst).map_err(
                |source| EbpfError::BadMap {
                    name: map_names::ORIG_DST,
                    source,
                },
            )?))),
            counters: PerCpuArray::try_from(counters).map_err(|source| EbpfError::BadMap {
                name: map_names::COUNTERS,
                source,
            })?,
            pins,
        })
    }

    /// Registers a sandbox and attaches the programs to its cgroup. The sandbox is redirected
    /// until the returned [`Attachment`] is dropped.
    pub fn attach(
        &mut self,
        cgroup: &Cgroup,
        id: SandboxId,
        listener_port: u16,
        ports: &[u16],
    ) -> Result<Attachment, EbpfError> {
        let conf = sandbox_conf(id, listener_port, ports);
        self.sandboxes
            .insert(cgroup.id(), conf, 0)
            .map_err(|source| EbpfError::Map {
                op: "insert into",
                map: map_names::SANDBOXES,
                source,
            })?;
        let mut links = Vec::with_capacity(3);
        for name in [CONNECT4, CONNECT6, SOCK_OPS] {
            let link = self.attach_one(name, cgroup)?;
            let link = match &self.pins {
                Some(pins) => {
                    AttachedLink::Pinned(pins.pin_link(&format!("sandbox{id}_{name}"), link)?)
                }
                None => AttachedLink::Fd(link),
            };
            links.push(link);
        }
        Ok(Attachment { links })
    }

    fn attach_one(&mut self, name: &'static str, cgroup: &Cgroup) -> Result<FdLink, EbpfError> {
        let attach_err = |source| EbpfError::Attach {
            name,
            cgroup: cgroup.path().into(),
            source,
        };
        let link_err = |source| EbpfError::Link {
            name,
            cgroup: cgroup.path().into(),
            source,
        };
        // Links are always multi-attach in the kernel; asking for AllowMultiple is EINVAL.
        let mode = CgroupAttachMode::Single;
        let link = if name == SOCK_OPS {
            let program: &mut SockOps = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(cgroup.dir(), mode).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?.try_into()
        } else {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let id = program.attach(cgroup.dir(), mode).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?.try_into()
        };
        link.map_err(link_err)
    }

    /// Forgets a sandbox's config (after its attachment is gone).
    pub fn forget(&mut self, cgroup_id: u64) -> Result<(), EbpfError> {
        match self.sandboxes.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EbpfError::Map {
                op: "remove from",
                map: map_names::SANDBOXES,
                source,
            }),
        }
    }

    /// A shareable handle on the `ORIG_DST` map.
    pub fn orig_dst(&self) -> OrigDstTable {
        self.orig_dst.clone()
    }

    /// Current counter values, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, EbpfError> {
        Counter::ALL
            .iter()
            .map(|counter| {
                let values =
                    self.counters
                        .get(&(*counter as u32), 0)
                        .map_err(|source| EbpfError::Map {
                            op: "read",
                            map: map_names::COUNTERS,
                            source,
                        })?;
                Ok((counter.name(), values.iter().sum()))
            })
            .collect()
    }

    /// The pin directory, when state is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::path)
    }
}

fn sandbox_conf(id: SandboxId, listener_port: u16, ports: &[u16]) -> SandboxConf {
    let mut conf = SandboxConf {
        sandbox_id: id.0,
        listener_port,
        nports: 0,
        ports: [0; MAX_PORTS],
    };
    for (slot, port) in conf.ports.iter_mut().zip(ports) {
        *slot = *port;
        conf.nports += 1;
    }
    conf
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .ok_or(EbpfError::MissingProgram { name })
}

fn missing_map(name: &'static str) -> EbpfError {
    EbpfError::BadMap {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str, pins: Option<&PinDir>) -> Result<Map, EbpfError> {
    let map = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
    if let Some(pins) = pins {
        pins.pin_map(name, &map)?;
    }
    Ok(map)
}

/// `ORIG_DST`, shared by the listeners; the lock is held for one lookup and its delete, never
/// across an await.
#[derive(Clone)]
pub struct OrigDstTable(Arc<Mutex<HashMap<MapData, ClientKey, OrigDstEntry>>>);

impl fmt::Debug for OrigDstTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrigDstTable")
    }
}

impl OrigDstTable {
    /// Looks up and deletes the entry for `key`; `None` when the connection was not redirected.
    pub fn take(&self, key: &ClientKey) -> Result<Option<OrigDstEntry>, EbpfError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match map.get(key, 0) {
            Ok(entry) => entry,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(EbpfError::Map {
                    op: "look up in",
                    map: map_names::ORIG_DST,
                    source,
                });
            }
        };
        match map.remove(key) {
            // Gone meanwhile: only LRU eviction deletes entries besides us.
            Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(entry)),
            Err(source) => Err(EbpfError::Map {
                op: "delete from",
                map: map_names::ORIG_DST,
                source,
            }),
        }
    }
}

/// Programs attached to one sandbox cgroup; dropping it detaches them (and removes their pins).
#[derive(Debug)]
pub struct Attachment {
    links: Vec<AttachedLink>,
}

#[derive(Debug)]
#[expect(
    dead_code,
    reason = "links are held only so that dropping them detaches the programs"
)]
enum AttachedLink {
    Fd(FdLink),
    Pinned(pins::PinnedLinkGuard),
}

impl Attachment {
    /// How many programs are attached.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}
