//! The `--owner PID` watchdog: a small process, in its own session, that waits for the owner
//! to exit and then stops the cluster and deletes its directory, so a crashed test run never
//! leaks brokers. It is a POSIX shell loop rather than this crate's binary because the library
//! must start it from any test process, where no kafka-local executable need exist (and a
//! multithreaded test cannot safely fork a copy of itself).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};
use crate::process;

/// What the watcher's command line contains (its `$0`): how `status` and `stop` recognise it.
pub const WATCHER_NAME: &str = "kafka-local-watcher";

/// The watcher: `sh -c SCRIPT kafka-local-watcher OWNER OWNER_START DIR`. Once the owner is
/// gone it does what `stop --dir DIR --timeout 15` does: SIGTERM (and SIGCONT, for paused
/// nodes) to each node whose recorded pid is still its JVM, SIGKILL after 15 s, then deletes
/// the files `start` made. It exits by itself when DIR has no cluster any more.
const SCRIPT: &str = r#"
owner=$1 ostart=$2 dir=$3
say() { echo "kafka watcher: $*"; }
now() { date -u +%FT%TZ; }
# S = start time of pid $1 (field 22 of /proc/PID/stat), empty if gone or a zombie.
start_of() {
    S=
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    rest=${stat##*) }
    set -- $rest
    case $1 in Z | X) return 0 ;; esac
    S=${20}
}
say "$(now) watching pid $owner for $dir"
while start_of "$owner" && [ "$S" = "$ostart" ]; do
    if [ ! -f "$dir/cluster.env" ]; then
        say "$dir has no cluster any more; exiting"
        exit 0
    fi
    sleep 1
done
say "$(now) owner pid $owner exited: stopping the cluster in $dir"
rm -f "$dir/watcher.pid"
exec 9>>"$dir/.lock"
flock -w 300 9 2>/dev/null || true
pids=
for n in "$dir"/node-1 "$dir"/node-2 "$dir"/node-3; do
    [ -f "$n/pid" ] || continue
    read -r pid start <"$n/pid" || continue
    start_of "$pid"
    [ -n "$S" ] && [ "$S" = "$start" ] || continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case $cmd in *"kafka.Kafka $n/server.properties"*) ;; *) continue ;; esac
    kill -TERM "$pid" 2>/dev/null
    kill -CONT "$pid" 2>/dev/null
    pids="$pids $pid:$start"
done
alive() {
    for ps in $pids; do
        start_of "${ps%%:*}"
        [ "$S" = "${ps#*:}" ] && return 0
    done
    return 1
}
i=0
while alive && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
for ps in $pids; do
    start_of "${ps%%:*}"
    if [ "$S" = "${ps#*:}" ]; then
        say "pid ${ps%%:*} still running 15s after SIGTERM; sending SIGKILL"
        kill -KILL "${ps%%:*}" 2>/dev/null
    fi
done
i=0
while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf "$dir/node-1" "$dir/node-2" "$dir/node-3" "$dir/tls"
rm -f "$dir/cluster.env" "$dir/cluster.env.tmp" "$dir/bootstrap" "$dir/overrides.properties" \
    "$dir/ready.err" "$dir/format.log" "$dir/sasl-users" "$dir/client-sasl.properties" \
    "$dir/client-ssl.properties" "$dir/watcher.pid" "$dir/watcher.log" "$dir/.lock"
rmdir "$dir" 2>/dev/null
say "$(now) stopped the cluster and deleted $dir"
"#;

/// Starts the watcher for `owner` (whose start time is `owner_start`) over `dir`; records
/// "PID STARTTIME" in DIR/watcher.pid and returns the pid.
pub fn start_watcher(dir: &Path, owner: u32, owner_start: u64) -> Result<u32> {
    let log_path = dir.join("watcher.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .ctx("cannot open", &log_path)?;
    let log2 = log.try_clone().ctx("cannot reopen", &log_path)?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(WATCHER_NAME)
        .arg(owner.to_string())
        .arg(owner_start.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    new_session(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start the owner watcher", e))?;
    let pid = child.id();
    let start = process::proc_start(pid).unwrap_or(0);
    crate::cache::write_atomic(&dir.join("watcher.pid"), &format!("{pid} {start}\n"))?;
    // Not waited for: it outlives this process by design (reparented to init when we exit).
    drop(child);
    Ok(pid)
}

/// The watcher's pid if DIR/watcher.pid names a live watcher.
pub fn watcher_pid(dir: &Path) -> Option<u32> {
    let (pid, start) = process::read_pid_file(&dir.join("watcher.pid"))?;
    process::proc_matches(pid, start, WATCHER_NAME).then_some(pid)
}

/// Runs the child in a session of its own (setsid): no terminal's SIGINT or SIGHUP reaches
/// it, and it is no job of the caller's shell.
pub(crate) fn new_session(cmd: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe, the only kind of call allowed between fork and
    // exec; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
