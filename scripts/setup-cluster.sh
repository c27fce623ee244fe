#!/usr/bin/env bash
# Bring up real "remote" computers on this machine for the remote-computer tests (tests/test_remote.py):
#   * a one-node SLURM cluster (slurmctld + slurmd on localhost, munge authentication, no accounting database),
#   * an SSH server on localhost that the current user reaches with a passphrase-less key (BatchMode).
# Made for containers and CI runners without systemd or cgroups: the daemons are started directly and the SLURM
# plugins need neither (proctrack/linuxproc, task/none, jobacct_gather/none). Debian/Ubuntu only (apt-get).
#
# Idempotent: packages, keys and configuration are only created when missing or different, daemons only started when
# not running (and restarted when this script changed the SLURM configuration). A rerun on a machine that is
# already set up takes about a second. Exits 0 when everything is up; otherwise non-zero with a message on stderr.
#
# GRES: the node declares one generic resource `gpu`, so `#SBATCH --gres=gpu:1` jobs are accepted and run. No real
# GPU is bound. A `gpu` without a device file cannot be declared: Slurm 22.05's gres/gpu plugin drops file-less GPUs
# ("Removing file-less GPU ... from final GRES list") and the controller then marks the node INVALID ("gres/gpu
# count reported lower than configured"); a regular file is refused as "not a valid character or block device". So
# the placeholder device is /dev/null (harmless with task/none: nothing is constrained; jobs see
# CUDA_VISIBLE_DEVICES=0). Set SETUP_CLUSTER_GRES=0 to leave GRES out.
#
# There is no slurmdbd: `sacct` reports that accounting is disabled. Finished jobs stay visible to
# `scontrol show job <id>` for MinJobAge (15 minutes) instead.
#
# Environment: SETUP_CLUSTER_GRES (1), SETUP_CLUSTER_TIMEOUT (seconds to wait for the node, 60).
set -euo pipefail

GRES=${SETUP_CLUSTER_GRES:-1}
TIMEOUT=${SETUP_CLUSTER_TIMEOUT:-60}
SLURM_CONF_DIR=/etc/slurm
SLURM_LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
SSHD_PID=/run/sshd.pid

log() { echo "setup-cluster: $*"; }
die() { echo "setup-cluster: ERROR: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    die "needs root or password-less sudo (to install packages and start daemons)"
fi
as_root() { "${SUDO[@]}" "$@"; }

running() {  # running PIDFILE: the process named in PIDFILE is alive
    local pid
    pid=$(as_root cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile PIDFILE: end the daemon this script started earlier (the one named in PIDFILE)
    local pid i
    pid=$(as_root cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    as_root kill "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do as_root kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    die "process $pid (from $1) did not stop"
}

export PATH="$PATH:/usr/sbin:/sbin"

# --- 1. packages -----------------------------------------------------------------------------------------------
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"
missing=()
for package in slurm-wlm slurmctld slurmd slurm-client munge openssh-server openssh-client; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    # Keep the packages' maintainer scripts from starting daemons (no init system here): this script starts them.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    status=0
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
           slurm-wlm slurmctld slurmd slurm-client munge openssh-server openssh-client >/dev/null; } || status=$?
    [ "$policy_created" -eq 1 ] && as_root rm -f /usr/sbin/policy-rc.d
    [ "$status" -eq 0 ] || die "apt-get install of ${missing[*]} failed (status $status)"
fi
for tool in slurmctld slurmd sinfo scontrol sbatch munged sshd ssh ssh-keygen; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || die "$tool not found after installation"
done

# --- 2. munge ----------------------------------------------------------------------------------------------------
MUNGE_USER=munge
id "$MUNGE_USER" >/dev/null 2>&1 || MUNGE_USER=root
if ! as_root test -s /etc/munge/munge.key; then
    log "creating the munge key"
    as_root mkdir -p /etc/munge
    if command -v mungekey >/dev/null || [ -x /usr/sbin/mungekey ]; then
        as_root mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
as_root chown "$MUNGE_USER:" /etc/munge /etc/munge/munge.key
as_root chmod 700 /etc/munge
as_root chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    as_root mkdir -p /run/munge /var/lib/munge /var/log/munge
    as_root chown "$MUNGE_USER:" /run/munge /var/lib/munge /var/log/munge
    as_root chmod 755 /run/munge
    if [ "$MUNGE_USER" = root ]; then
        as_root munged --force
    else
        as_root runuser -u "$MUNGE_USER" -- munged
    fi
    for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- 3. SLURM configuration ---------------------------------------------------------------------------------------
NODE=$(hostname -s 2>/dev/null || true)
if [ -z "$NODE" ] || ! getent hosts "$NODE" >/dev/null; then
    NODE=localhost
fi
CPUS=$(nproc)
[ "$CPUS" -gt 2 ] && CPUS=2
MEMORY=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
[ -n "$MEMORY" ] || MEMORY=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
if [ "$GRES" = 1 ]; then
    GRES_LINE="GresTypes=gpu"
    NODE_GRES=" Gres=gpu:1"
else
    GRES_LINE="# GresTypes: left out (SETUP_CLUSTER_GRES=0)"
    NODE_GRES=""
fi

conf=$(cat <<EOF
# Written by scripts/setup-cluster.sh: a one-node SLURM cluster on localhost for tests (no systemd, no cgroups).
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd.log
ReturnToService=2
MinJobAge=900
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
$GRES_LINE
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY$NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
gres_conf=$(cat <<EOF
# Written by scripts/setup-cluster.sh: one placeholder 'gpu' (/dev/null: Slurm drops file-less GPUs), so that
# --gres=gpu:1 jobs are accepted; no real device is behind it.
AutoDetect=off
NodeName=$NODE Name=gpu Count=1 File=/dev/null
EOF
)

changed=0
as_root mkdir -p "$SLURM_CONF_DIR" "$SLURM_LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
write_if_changed() {  # write_if_changed PATH CONTENT
    if [ "$(as_root cat "$1" 2>/dev/null)" != "$2" ]; then
        printf '%s\n' "$2" | as_root tee "$1" >/dev/null
        changed=1
    fi
}
write_if_changed "$SLURM_CONF_DIR/slurm.conf" "$conf"
if [ "$GRES" = 1 ]; then
    write_if_changed "$SLURM_CONF_DIR/gres.conf" "$gres_conf"
elif as_root test -e "$SLURM_CONF_DIR/gres.conf"; then
    as_root rm -f "$SLURM_CONF_DIR/gres.conf"
    changed=1
fi
if [ "$changed" -eq 1 ]; then
    log "SLURM configuration written ($SLURM_CONF_DIR/slurm.conf, node $NODE, CPUs=$CPUS, RealMemory=$MEMORY)"
    # Daemons started with an older configuration: restart them (both read slurm.conf at start).
    if running "$SLURMD_PID"; then log "restarting slurmd"; stop_pidfile "$SLURMD_PID"; fi
    if running "$CTLD_PID"; then log "restarting slurmctld"; stop_pidfile "$CTLD_PID"; fi
fi

# --- 4. SLURM daemons ---------------------------------------------------------------------------------------------
if ! running "$CTLD_PID"; then
    log "starting slurmctld"
    as_root slurmctld || die "slurmctld failed to start (see $SLURM_LOG_DIR/slurmctld.log)"
fi
for i in $(seq $((TIMEOUT * 5))); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    running "$CTLD_PID" || die "slurmctld exited (see $SLURM_LOG_DIR/slurmctld.log: $(as_root tail -n 3 "$SLURM_LOG_DIR/slurmctld.log" 2>/dev/null | tr '\n' ' '))"
    sleep 0.2
done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer after ${TIMEOUT}s (see $SLURM_LOG_DIR/slurmctld.log)"
if ! running "$SLURMD_PID"; then
    log "starting slurmd"
    as_root slurmd -N "$NODE" || die "slurmd failed to start (see $SLURM_LOG_DIR/slurmd.log)"
fi

state=""
resumed=0
for i in $(seq $((TIMEOUT * 5))); do
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -1)
    case "$state" in
        idle|mix|alloc|comp) break ;;
        down*|drain*|drng*|fail*)
            if [ "$resumed" -eq 0 ] && [ "$i" -gt 15 ]; then  # give a re-registering node 3 s first
                log "node $NODE is $state: resuming it"
                as_root scontrol update nodename="$NODE" state=resume 2>/dev/null || true
                resumed=1
            fi ;;
    esac
    running "$SLURMD_PID" || die "slurmd exited (see $SLURM_LOG_DIR/slurmd.log: $(as_root tail -n 3 "$SLURM_LOG_DIR/slurmd.log" 2>/dev/null | tr '\n' ' '))"
    sleep 0.2
done
case "$state" in
    idle|mix|alloc|comp) ;;
    *) die "SLURM node $NODE is '${state:-unknown}' after ${TIMEOUT}s: $(scontrol show node "$NODE" 2>/dev/null | grep -o 'Reason=.*' || true)" ;;
esac

# --- 5. SSH to localhost ------------------------------------------------------------------------------------------
SSH_DIR="$HOME/.ssh"
KEY="$SSH_DIR/id_ed25519"
mkdir -p "$SSH_DIR"
chmod 700 "$SSH_DIR"
if [ ! -f "$KEY" ]; then
    log "creating the SSH key $KEY"
    ssh-keygen -q -t ed25519 -N '' -C "setup-cluster@$NODE" -f "$KEY"
fi
[ -f "$KEY.pub" ] || ssh-keygen -y -f "$KEY" > "$KEY.pub"
touch "$SSH_DIR/authorized_keys"
chmod 600 "$SSH_DIR/authorized_keys"
grep -qxF "$(cat "$KEY.pub")" "$SSH_DIR/authorized_keys" || cat "$KEY.pub" >> "$SSH_DIR/authorized_keys"

ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || { log "creating SSH host keys"; as_root ssh-keygen -A; }
# known_hosts from the host keys themselves (no ssh-keyscan, which would need sshd up): plain, unhashed entries that
# OpenSSH and paramiko (AiiDA's core.ssh) both read. Stale entries for these names are removed first.
touch "$SSH_DIR/known_hosts"
chmod 644 "$SSH_DIR/known_hosts"
for host in localhost 127.0.0.1 "$NODE"; do
    up_to_date=1
    for pub in /etc/ssh/ssh_host_*_key.pub; do
        read -r type key _ < "$pub"
        grep -qxF "$host $type $key" "$SSH_DIR/known_hosts" || up_to_date=0
    done
    if [ "$up_to_date" -eq 0 ]; then
        ssh-keygen -q -R "$host" -f "$SSH_DIR/known_hosts" >/dev/null 2>&1 || true
        for pub in /etc/ssh/ssh_host_*_key.pub; do
            read -r type key _ < "$pub"
            echo "$host $type $key" >> "$SSH_DIR/known_hosts"
        done
    fi
done
rm -f "$SSH_DIR/known_hosts.old"

if ! running "$SSHD_PID"; then
    log "starting sshd"
    as_root mkdir -p /run/sshd
    as_root chmod 755 /run/sshd
    as_root sshd -t || die "sshd configuration test failed"
    as_root "$(command -v sshd)" || die "sshd failed to start"
fi
ok=0
for i in $(seq 25); do
    if ssh -o BatchMode=yes -o ConnectTimeout=5 localhost true 2>/dev/null; then ok=1; break; fi
    sleep 0.2
done
[ "$ok" -eq 1 ] || die "ssh -o BatchMode=yes localhost true fails: $(ssh -o BatchMode=yes -o ConnectTimeout=5 localhost true 2>&1 | tail -n 2 | tr '\n' ' ')"

gres_state=$(sinfo -h -N -n "$NODE" -o '%G' 2>/dev/null | head -1)
[ "$gres_state" = "(null)" ] && gres_state=none
echo "setup-cluster: OK: SLURM node $NODE is $state (CPUs=$CPUS, RealMemory=${MEMORY}M, gres=${gres_state:-none}, partition debug); ssh $(id -un)@localhost works with $KEY"
