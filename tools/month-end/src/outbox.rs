//! The outbox directory: `<outbox>/<tenant>/<legal entity>/<YYYY-MM>/<NNN>/`, one directory per
//! batch. A batch appears whole or not at all: its files are written into a hidden directory
//! beside it, which is renamed into place once the manifest is in, so a job killed mid-write
//! leaves only the hidden directory, which the next run removes.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::batch::{Batch, Entity, Manifest, Period, MANIFEST};
use crate::MonthEndError;

/// A batch already in the outbox.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// The directory of `entity`'s batches for `period`.
pub fn period_dir(
    outbox: &Path,
    entity: &Entity,
    period: Period,
) -> Result<PathBuf, MonthEndError> {
    for (what, name) in [
        ("tenant", &entity.tenant),
        ("legal entity", &entity.legal_entity_id),
    ] {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(MonthEndError::Input {
                what: format!("{what} {name:?}"),
                message: "cannot name a directory of the outbox".to_owned(),
            });
        }
    }
    Ok(outbox
        .join(&entity.tenant)
        .join(&entity.legal_entity_id)
        .join(period.to_string()))
}

/// The batches in `dir`, by sequence; removes what a killed run left unfinished.
pub fn written(dir: &Path) -> Result<Vec<Written>, MonthEndError> {
    let io = |path: &Path, source: std::io::Error| MonthEndError::Outbox {
        path: path.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io(dir, err)),
    };
    let mut batches = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
            continue;
        }
        let manifest_path = path.join(MANIFEST);
        let text = fs::read(&manifest_path).map_err(|e| io(&manifest_path, e))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| MonthEndError::Input {
                what: manifest_path.display().to_string(),
                message: format!("not a batch manifest: {e}"),
            })?;
        batches.push(Written {
            dir: path,
            manifest,
        });
    }
    batches.sort_by_key(|b| b.manifest.sequence);
    Ok(batches)
}

/// Whether `batch`'s files are, byte for byte, those in `written`; names the first that is
/// not.
pub fn differs(batch: &Batch, written: &Written) -> Option<PathBuf> {
    batch.files.iter().find_map(|file| {
        let path = written.dir.join(file.name);
        (fs::read(&path).ok().as_deref() != Some(file.bytes.as_slice())).then_some(path)
    })
}

/// Writes `batch` as `<dir>/<NNN>`, whole or not at all.
pub fn write(dir: &Path, batch: &Batch) -> Result<PathBuf, MonthEndError> {
    let name = format!("{:03}", batch.manifest.sequence);
    let target = dir.join(&name);
    let staging = dir.join(format!(".{name}.partial"));
    let io = |path: &Path, source: std::io::Error| MonthEndError::Outbox {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    for file in &batch.files {
        let path = staging.join(file.name);
        let mut out = fs::File::create(&path).map_err(|e| io(&path, e))?;
        out.write_all(&file.bytes).map_err(|e| io(&path, e))?;
        out.sync_all().map_err(|e| io(&path, e))?;
    }
    fs::rename(&staging, &target).map_err(|e| io(&target, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))?;
    Ok(target)
}
