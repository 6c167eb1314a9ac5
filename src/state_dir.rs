//! `bridge.state_dir`: where tokens and session state persist. The folder is 0700, files
//! are 0600 and replaced atomically (write to a temporary file, fsync, rename), so a crash
//! never leaves half a token file behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Creates the folder (0700) if missing and tightens its mode if it exists.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating state_dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    }
    Ok(())
}

/// Atomically replaces `dir/name` with `data`, mode 0600.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &target).with_context(|| format!("renaming into {}", target.display()))?;
    Ok(target)
}

/// The one writer of files that change while the bridge runs (tokens, guard settings,
/// trips, liveness): callers hand it bytes and go on; its thread does the fsync, so no
/// async worker waits on a disk and nothing fsyncs while a lock is held. The newest
/// bytes of a file replace any not yet written (it holds at most one version per file).
pub mod writer {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Condvar, Mutex, OnceLock};

    enum Op {
        Write(Vec<u8>, &'static str),
        Remove,
    }

    #[derive(Default)]
    struct Queue {
        pending: HashMap<PathBuf, Op>,
        /// A file is being written or removed now.
        busy: bool,
    }

    struct Writer {
        queue: Mutex<Queue>,
        work: Condvar,
        idle: Condvar,
    }

    fn writer() -> &'static Writer {
        static WRITER: OnceLock<&'static Writer> = OnceLock::new();
        WRITER.get_or_init(|| {
            let w: &'static Writer = Box::leak(Box::new(Writer {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
                idle: Condvar::new(),
            }));
            let spawned = std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || run(w));
            if let Err(e) = spawned {
                tracing::error!(event = "state_writer_failed", error = %e, "cannot start the state writer");
            }
            w
        })
    }

    fn lock(w: &Writer) -> std::sync::MutexGuard<'_, Queue> {
        w.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(w: &'static Writer) {
        loop {
            let (path, op) = {
                let mut q = lock(w);
                q.busy = false;
                w.idle.notify_all();
                while q.pending.is_empty() {
                    q = w.work.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                let path = q.pending.keys().next().cloned().unwrap_or_default();
                let op = q.pending.remove(&path);
                q.busy = true;
                match op {
                    Some(op) => (path, op),
                    None => continue,
                }
            };
            // No lock is held from here on.
            match op {
                Op::Write(data, event) => {
                    let (Some(dir), Some(name)) =
                        (path.parent(), path.file_name().and_then(|n| n.to_str()))
                    else {
                        continue;
                    };
                    if let Err(e) = super::write_atomic(dir, name, &data) {
                        tracing::warn!(event, error = format!("{e:#}"), path = %path.display(), "file not saved");
                    }
                }
                Op::Remove => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    fn submit(path: PathBuf, op: Op) {
        let w = writer();
        lock(w).pending.insert(path, op);
        w.work.notify_one();
    }

    /// Writes `dir/name` (atomically, 0600) soon; `event` names the warning if it fails.
    pub fn write(dir: &std::path::Path, name: &str, data: Vec<u8>, event: &'static str) {
        submit(dir.join(name), Op::Write(data, event));
    }

    /// Removes `dir/name` soon, after (and instead of) any write of it not yet done.
    pub fn remove(dir: &std::path::Path, name: &str) {
        submit(dir.join(name), Op::Remove);
    }

    /// Waits until everything handed over so far is on disk (at shutdown), at most
    /// `timeout`.
    pub fn flush(timeout: std::time::Duration) -> bool {
        let w = writer();
        let end = std::time::Instant::now() + timeout;
        let mut q = lock(w);
        while q.busy || !q.pending.is_empty() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            q = w
                .idle
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

const EMBEDDED_LOGIN_FILE: &str = "embedded_broker.json";

/// The embedded broker's login: made once (random password), stored 0600 in `dir`, and
/// reused after every restart. The first time, it is printed once with how to use it.
pub fn embedded_login(dir: &Path) -> anyhow::Result<(String, String)> {
    prepare(dir)?;
    let path = dir.join(EMBEDDED_LOGIN_FILE);
    if let Ok(raw) = fs::read(&path) {
        let v: serde_json::Value = serde_json::from_slice(&raw)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        if let (Some(u), Some(p)) = (v["username"].as_str(), v["password"].as_str()) {
            return Ok((u.to_string(), p.to_string()));
        }
    }
    use rand::Rng;
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let user = "vehicle2mqtt".to_string();
    let body = serde_json::json!({"username": user, "password": password});
    write_atomic(dir, EMBEDDED_LOGIN_FILE, body.to_string().as_bytes())?;
    eprintln!(
        "vehicle2mqtt: the embedded MQTT broker accepts no anonymous clients. Its login, made now \
         and kept in {}:\n    username: {user}\n    password: {password}\nUse it in Home \
         Assistant's MQTT integration and in mosquitto_sub/_pub (-u {user} -P {password}), or set \
         mqtt.username and mqtt.password to choose your own.",
        path.display()
    );
    Ok((user, password))
}

const CLIENT_ID_FILE: &str = "mqtt_client_id";

/// The MQTT client id of this installation: `vehicle2mqtt-<host>-<random>`, made once and
/// kept in `dir`, so it survives restarts (one session per bridge) yet differs between
/// two bridges on one broker (the same id would make the broker drop one for the other).
pub fn client_id(dir: &Path) -> anyhow::Result<String> {
    prepare(dir)?;
    let path = dir.join(CLIENT_ID_FILE);
    if let Ok(raw) = fs::read_to_string(&path) {
        let id = raw.trim();
        if !id.is_empty() && id.len() <= 64 {
            return Ok(id.to_string());
        }
    }
    use rand::Rng;
    let host: String = fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let suffix: u32 = rand::rng().random();
    let id = if host.is_empty() {
        format!("vehicle2mqtt-{suffix:08x}")
    } else {
        format!("vehicle2mqtt-{host}-{suffix:08x}")
    };
    write_atomic(dir, CLIENT_ID_FILE, id.as_bytes())?;
    Ok(id)
}

/// How often the running bridge proves it is alive.
pub const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Older than this, the bridge counts as dead.
pub const ALIVE_MAX_AGE: i64 = 30;
const ALIVE_FILE: &str = "alive.json";

/// Written by the hub's loop: if the loop stalls, the file goes stale. It carries the
/// health verdict (`observe::Snapshot::health`) so `vehicle2mqtt health` agrees with
/// `/healthz`.
/// Written through [`writer`]: the hub's loop never waits on the disk.
pub fn write_alive(dir: &Path, mqtt_connected: bool, health: Result<(), String>) {
    let body = serde_json::json!({
        "ts": chrono::Utc::now().timestamp(),
        "mqtt_connected": mqtt_connected,
        "healthy": health.is_ok(),
        "reason": health.err(),
    });
    writer::write(
        dir,
        ALIVE_FILE,
        body.to_string().into_bytes(),
        "alive_write_failed",
    );
}

/// Removed when the bridge stops, so `health` fails at once instead of for 30 s: after
/// every liveness write already handed over, and waited for.
pub fn remove_alive(dir: &Path) {
    writer::remove(dir, ALIVE_FILE);
    writer::flush(std::time::Duration::from_secs(5));
}

/// For `vehicle2mqtt health`: Ok with a summary when the bridge wrote its liveness file
/// within `ALIVE_MAX_AGE` seconds and found itself healthy; the reason otherwise.
pub fn check_alive(dir: &Path) -> Result<String, String> {
    let path = dir.join(ALIVE_FILE);
    let raw = fs::read_to_string(&path)
        .map_err(|e| format!("not running (no liveness file {}: {e})", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let ts = v["ts"]
        .as_i64()
        .ok_or_else(|| format!("{}: no ts", path.display()))?;
    let age = chrono::Utc::now().timestamp() - ts;
    if age > ALIVE_MAX_AGE {
        return Err(format!("last sign of life {age} s ago"));
    }
    if v["healthy"] == serde_json::Value::Bool(false) || v["mqtt_connected"] != true {
        let reason = v["reason"].as_str().unwrap_or("MQTT is not connected");
        return Err(format!("running but unhealthy: {reason}"));
    }
    Ok(format!("healthy ({age} s ago), mqtt connected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        prepare(&dir).unwrap();
        write_atomic(&dir, "tokens.json", b"one").unwrap();
        let path = write_atomic(&dir, "tokens.json", b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        assert!(!dir.join(".tokens.json.tmp").exists());
    }

    #[test]
    fn client_id_is_kept_per_installation_and_differs_between_them() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = client_id(a.path()).unwrap();
        assert!(
            first.starts_with("vehicle2mqtt-") && first.len() <= 64,
            "{first}"
        );
        assert_eq!(client_id(a.path()).unwrap(), first, "kept across restarts");
        assert_ne!(client_id(b.path()).unwrap(), first, "another installation");
    }

    #[test]
    fn liveness_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_alive(tmp.path()).is_err(), "no file: not alive");
        write_alive(tmp.path(), true, Ok(()));
        assert!(writer::flush(std::time::Duration::from_secs(5)));
        assert!(check_alive(tmp.path()).unwrap().contains("healthy"));
        // Alive but unhealthy: non-zero, with the reason.
        write_alive(tmp.path(), false, Err("MQTT is not connected".into()));
        assert!(writer::flush(std::time::Duration::from_secs(5)));
        assert!(check_alive(tmp.path())
            .unwrap_err()
            .contains("MQTT is not connected"));
        // Stopped: the file is gone at once, even with a write still queued.
        write_alive(tmp.path(), true, Ok(()));
        remove_alive(tmp.path());
        assert!(check_alive(tmp.path()).unwrap_err().contains("not running"));
        let stale =
            serde_json::json!({"ts": chrono::Utc::now().timestamp() - 120, "mqtt_connected": true});
        write_atomic(tmp.path(), ALIVE_FILE, stale.to_string().as_bytes()).unwrap();
        assert!(check_alive(tmp.path()).is_err(), "stale: not alive");
    }

    #[test]
    fn the_writer_keeps_the_newest_bytes_and_writes_off_the_caller() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        prepare(&dir).unwrap();
        for n in 0..1000 {
            writer::write(
                &dir,
                "guard.json",
                format!("{n}").into_bytes(),
                "test_not_saved",
            );
        }
        writer::write(&dir, "other.json", b"x".to_vec(), "test_not_saved");
        assert!(writer::flush(std::time::Duration::from_secs(10)));
        assert_eq!(fs::read_to_string(dir.join("guard.json")).unwrap(), "999");
        assert_eq!(fs::read(dir.join("other.json")).unwrap(), b"x");
        // A folder that cannot be written costs only a warning.
        writer::write(
            &tmp.path().join("missing"),
            "a.json",
            b"y".to_vec(),
            "test_not_saved",
        );
        assert!(writer::flush(std::time::Duration::from_secs(10)));
        assert!(!tmp.path().join("missing/a.json").exists());
        writer::write(&dir, "other.json", b"z".to_vec(), "test_not_saved");
        assert!(writer::flush(std::time::Duration::from_secs(10)));
        assert_eq!(
            fs::read(dir.join("other.json")).unwrap(),
            b"z",
            "the writer goes on"
        );
    }
}
