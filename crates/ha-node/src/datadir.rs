//! The data directory's identity file `member.toml`: which cluster and
//! member the directory belongs to. Written once (atomically: temp file,
//! fsync, rename, fsync of the directory) on first start; every later start
//! checks it against the configuration and refuses a directory of another
//! cluster or member.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the identity file inside the data dir.
pub const MEMBER_FILE: &str = "member.toml";
/// Largest identity file read, in bytes.
pub const MAX_MEMBER_FILE_BYTES: u64 = 64 << 10;
/// Format version written by this build.
pub const MEMBER_FILE_VERSION: u32 = 1;

/// What `member.toml` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// Format version.
    pub version: u32,
    /// Cluster token.
    pub token: String,
    /// Cluster id as hex (`0` while a joining member has not learned it).
    pub cluster_id: String,
    /// Member id as hex.
    pub member_id: String,
    /// Member name at creation.
    pub name: String,
    /// `--shards` at creation (absent: 1, as written before sharding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// `--replication` at creation (only with `shards` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<usize>,
    /// The founding members (hex ids) the shard placement is computed
    /// over (only with `shards` > 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_members: Vec<String>,
}

/// How the key space is split, fixed at cluster creation and recorded in
/// `member.toml` (nothing is recorded for the default single group, so a
/// `--shards 1` directory is byte-for-byte what earlier builds wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Data shards (1 = group 0 holds the data).
    pub shards: u32,
    /// Replicas per shard (ignored with one shard).
    pub replication: usize,
    /// Founding member ids the placement is computed over (empty with one
    /// shard).
    pub members: Vec<u64>,
}

impl ShardLayout {
    /// The default: one group on every member.
    pub fn single() -> Self {
        Self {
            shards: 1,
            replication: 0,
            members: Vec::new(),
        }
    }

    fn describe(&self) -> String {
        if self.shards <= 1 {
            "--shards 1".to_string()
        } else {
            format!(
                "--shards {} --replication {}",
                self.shards, self.replication
            )
        }
    }

    fn of_file(f: &MemberFile, path: &Path) -> Result<Self, DataDirError> {
        let shards = f.shards.unwrap_or(1);
        if shards <= 1 {
            return Ok(Self::single());
        }
        let members = f
            .shard_members
            .iter()
            .map(|m| {
                u64::from_str_radix(m, 16).map_err(|e| DataDirError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("shard_members entry {m:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shards,
            replication: f.replication.unwrap_or(0),
            members,
        })
    }
}

/// Why the data dir cannot be used. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// IO failure.
    #[error("data dir {path}: {error}")]
    Io {
        /// Path.
        path: PathBuf,
        /// OS error.
        error: std::io::Error,
    },
    /// `member.toml` is unreadable.
    #[error("data dir {path}: corrupt {MEMBER_FILE}: {reason}")]
    Corrupt {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory belongs to another cluster or member.
    #[error(
        "data dir {path} belongs to cluster {} member {} (token {:?}), \
         but this configuration is cluster {} member {} (token {:?}); \
         use another --data-dir or the matching --name/--initial-cluster/--initial-cluster-token",
        found.cluster_id, found.member_id, found.token, want.cluster_id, want.member_id, want.token
    )]
    OtherCluster {
        /// Path.
        path: PathBuf,
        /// What the directory holds.
        found: Box<MemberFile>,
        /// What the configuration says.
        want: Box<MemberFile>,
    },
    /// The directory was created with another shard layout.
    #[error(
        "data dir {path} was created with {found}, but this configuration says {want}; \
         --shards and --replication are fixed at cluster creation"
    )]
    OtherLayout {
        /// Path.
        path: PathBuf,
        /// What the directory records.
        found: String,
        /// What the configuration says.
        want: String,
    },
}

/// Reads `dir/member.toml` if it exists (`None` for a new directory).
pub fn read_member_file(dir: &Path) -> Result<Option<MemberFile>, DataDirError> {
    let file = dir.join(MEMBER_FILE);
    let meta = match std::fs::metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(DataDirError::Io { path: file, error }),
    };
    if meta.len() > MAX_MEMBER_FILE_BYTES {
        return Err(DataDirError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("larger than {MAX_MEMBER_FILE_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(&file).map_err(|error| DataDirError::Io {
        path: file.clone(),
        error,
    })?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| DataDirError::Corrupt {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The member id recorded in `dir/member.toml`, if the directory has one.
pub fn read_member_id(dir: &Path) -> Result<Option<u64>, DataDirError> {
    match read_member_file(dir)? {
        None => Ok(None),
        Some(f) => u64::from_str_radix(&f.member_id, 16)
            .map(Some)
            .map_err(|e| DataDirError::Corrupt {
                path: dir.to_path_buf(),
                reason: format!("member_id {:?}: {e}", f.member_id),
            }),
    }
}

/// Checks (or on first start writes) `dir/member.toml`. `cluster_id` 0 means
/// "not known yet" (a joining member): then only token and member id must
/// match. Returns whether the directory was new.
pub fn check_or_init(
    dir: &Path,
    token: &str,
    cluster_id: u64,
    member_id: u64,
    name: &str,
) -> Result<bool, DataDirError> {
    check_or_init_layout(
        dir,
        token,
        cluster_id,
        member_id,
        name,
        &ShardLayout::single(),
    )
    .map(|(fresh, _)| fresh)
}

/// [`check_or_init`] with a shard layout: a new directory records
/// `layout`; an existing one must record the same shard count and
/// replication ([`DataDirError::OtherLayout`] otherwise). Returns whether
/// the directory was new and the recorded layout (whose member list the
/// placement is computed over).
pub fn check_or_init_layout(
    dir: &Path,
    token: &str,
    cluster_id: u64,
    member_id: u64,
    name: &str,
    layout: &ShardLayout,
) -> Result<(bool, ShardLayout), DataDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DataDirError::Io {
            path: path.clone(),
            error,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let file = dir.join(MEMBER_FILE);
    match read_member_file(dir)? {
        Some(found) => {
            let want_cluster = format!("{cluster_id:x}");
            let want_member = format!("{member_id:x}");
            let cluster_ok =
                cluster_id == 0 || found.cluster_id == "0" || found.cluster_id == want_cluster;
            if found.version != MEMBER_FILE_VERSION
                || found.token != token
                || found.member_id != want_member
                || !cluster_ok
            {
                return Err(DataDirError::OtherCluster {
                    path: dir.to_path_buf(),
                    found: Box::new(found),
                    want: Box::new(MemberFile {
                        version: MEMBER_FILE_VERSION,
                        token: token.to_string(),
                        cluster_id: want_cluster,
                        member_id: want_member,
                        name: name.to_string(),
                        shards: None,
                        replication: None,
                        shard_members: Vec::new(),
                    }),
                });
            }
            let recorded = ShardLayout::of_file(&found, dir)?;
            let same = recorded.shards == layout.shards.max(1)
                && (recorded.shards <= 1 || recorded.replication == layout.replication);
            if !same {
                return Err(DataDirError::OtherLayout {
                    path: dir.to_path_buf(),
                    found: recorded.describe(),
                    want: layout.describe(),
                });
            }
            Ok((false, recorded))
        }
        None => {
            // A directory with data but no identity file was not made by us.
            let has_db = dir.join("db").exists();
            if has_db {
                return Err(DataDirError::Corrupt {
                    path: dir.to_path_buf(),
                    reason: format!("{MEMBER_FILE} is missing but a database exists"),
                });
            }
            let content = MemberFile {
                version: MEMBER_FILE_VERSION,
                token: token.to_string(),
                cluster_id: format!("{cluster_id:x}"),
                member_id: format!("{member_id:x}"),
                name: name.to_string(),
                shards: (layout.shards > 1).then_some(layout.shards),
                replication: (layout.shards > 1).then_some(layout.replication),
                shard_members: if layout.shards > 1 {
                    layout.members.iter().map(|m| format!("{m:x}")).collect()
                } else {
                    Vec::new()
                },
            };
            let text = toml::to_string(&content).map_err(|e| DataDirError::Corrupt {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
            let tmp = dir.join(format!("{MEMBER_FILE}.tmp"));
            {
                let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
                f.write_all(text.as_bytes()).map_err(io(&tmp))?;
                f.sync_all().map_err(io(&tmp))?;
            }
            std::fs::rename(&tmp, &file).map_err(io(&file))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            let recorded = ShardLayout::of_file(&content, dir)?;
            Ok((true, recorded))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_writes_later_starts_check() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_or_init(d.path(), "t", 5, 7, "a").unwrap());
        assert!(!check_or_init(d.path(), "t", 5, 7, "a").unwrap());
        let e = check_or_init(d.path(), "t", 6, 7, "a").unwrap_err();
        assert!(matches!(e, DataDirError::OtherCluster { .. }), "{e}");
        assert!(e.to_string().contains("belongs to cluster 5"), "{e}");
        let e = check_or_init(d.path(), "u", 5, 7, "a").unwrap_err();
        assert!(matches!(e, DataDirError::OtherCluster { .. }));
        let e = check_or_init(d.path(), "t", 5, 8, "a").unwrap_err();
        assert!(matches!(e, DataDirError::OtherCluster { .. }));
    }

    #[test]
    fn member_id_is_read_back() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_member_id(d.path()).unwrap(), None);
        check_or_init(d.path(), "t", 5, 0x5a3c, "a").unwrap();
        assert_eq!(read_member_id(d.path()).unwrap(), Some(0x5a3c));
    }

    #[test]
    fn shard_layout_is_recorded_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let four = ShardLayout {
            shards: 4,
            replication: 3,
            members: vec![0xa, 0xb, 0xc],
        };
        let (fresh, rec) = check_or_init_layout(d.path(), "t", 5, 7, "a", &four).unwrap();
        assert!(fresh);
        assert_eq!(rec, four);
        // A restart reads the members back from the file.
        let again = ShardLayout {
            members: Vec::new(),
            ..four.clone()
        };
        let (fresh, rec) = check_or_init_layout(d.path(), "t", 5, 7, "a", &again).unwrap();
        assert!(!fresh);
        assert_eq!(rec, four);
        for other in [
            ShardLayout::single(),
            ShardLayout {
                shards: 8,
                ..four.clone()
            },
            ShardLayout {
                replication: 2,
                ..four.clone()
            },
        ] {
            let e = check_or_init_layout(d.path(), "t", 5, 7, "a", &other).unwrap_err();
            assert!(matches!(e, DataDirError::OtherLayout { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("was created with --shards 4 --replication 3"),
                "{e}"
            );
        }
        // A directory of the default layout refuses --shards > 1 and is
        // written exactly as before (no shard keys).
        let d1 = tempfile::tempdir().unwrap();
        check_or_init(d1.path(), "t", 5, 7, "a").unwrap();
        let text = std::fs::read_to_string(d1.path().join(MEMBER_FILE)).unwrap();
        assert!(!text.contains("shard"), "{text}");
        let e = check_or_init_layout(d1.path(), "t", 5, 7, "a", &four).unwrap_err();
        assert!(e.to_string().contains("was created with --shards 1"), "{e}");
    }

    #[test]
    fn corrupt_file_is_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(MEMBER_FILE), "garbage = [").unwrap();
        let e = check_or_init(d.path(), "t", 5, 7, "a").unwrap_err();
        assert!(matches!(e, DataDirError::Corrupt { .. }), "{e}");
    }
}
