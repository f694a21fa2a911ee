#!/usr/bin/env bash
# krg: build and run a local 4-node cluster on this machine, with every
# feature live, for trying krg out.
#
#   sudo tests/local-cluster.sh up       build, install, start, print how to use it
#   sudo tests/local-cluster.sh status   what is running
#   sudo tests/local-cluster.sh down     stop everything `up` started (idempotent)
#
# As root (the real thing):
#   * installs the binaries in /usr/local/sbin, plus /sbin/mkfs.kdfs and
#     /sbin/mount.kdfs (so `mount -t kdfs` works);
#   * a bridge krgl0 in the root network namespace carries node 1
#     (10.77.0.1); nodes 2-4 each get a network namespace krgl-n<N> with a
#     veth on that bridge (10.77.0.<N>/24, MAC 02:6b:72:67:00:0<N>). Nothing
#     is routed off the machine. Node 1 stays in the root namespace because
#     the kernel delivers proc-connector events (which krgd needs to track
#     CHECKPOINTABLE processes) only to the initial network namespace;
#   * 4 krgd find each other by UDP broadcast, `krgadm cluster start` forms
#     the cluster; admin sockets /run/krg/node<N>.sock, and
#     /run/krg/krgd.sock -> node1.sock so a plain `krgadm` works;
#   * the scheduler tree of node 1 at /config/krg_scheduler (nodes 2-4 at
#     /run/krg-local/sched/node<N>), mem_probe loaded on every node and wired
#     to an echo_policy on node 1;
#   * kDFS formatted under /var/lib/krg-local/kdfs<N> (--replicas 2: each
#     node's store mirrored on the next node) and mounted at
#     /mnt/kdfs/node<N> on every node (node 1, the root node, first);
#   * a CHECKPOINTABLE demo job counting into /run/krg-local/demo.count;
#   * the /krg tree (nodes, XCPU sessions, the process table) served by
#     node 1's krgd (nodes 2-4 find it served and go without), and `krg`
#     (run, ps, kill, push, get) in /usr/local/sbin.
# `up` starts from empty state every time (it wipes /var/lib/krg-local).
# KRG_LOCAL_DATA=DIR puts that state (the kDFS stores among it) in DIR
# instead, e.g. on a journaled ext4 (kDFS creates are slow on ext4 without
# a journal, see docs/kdfs.md); `down` needs nothing (it undoes what the
# state file recorded).
# KRG_LOCAL_INSTALLED=1 runs the binaries of the installed Debian package
# (packaging/deb/build.sh; /usr/sbin, /usr/bin, /sbin) instead of building.
#
# Not root: 4 krgd on 127.0.0.1:7611-7614 with --peer lists and the cluster
# formed; no scheduler tree, /krg tree, kDFS or checkpoint demo (FUSE mounts,
# the proc connector and restart all need root), and no krg run (a job's PID
# namespace needs a root krgd).
#
# Every process, mount, namespace and link `up` creates is recorded in the
# state file; `down` undoes exactly those (processes by PID, after checking
# that the PID still runs the program that was started).

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODES=4
SESSION=7
PORT=7600
BRIDGE=krgl0
NS_PREFIX=krgl-n

if [ "$(id -u)" = 0 ]; then
    ROOT=1
    STATE_DIR=/run/krg-local
    DATA_DIR=${KRG_LOCAL_DATA:-/var/lib/krg-local}
    SOCK_DIR=/run/krg
    BIN=/usr/local/sbin
else
    ROOT=0
    STATE_DIR=${XDG_RUNTIME_DIR:-/tmp}/krg-local-$(id -u)
    DATA_DIR=$STATE_DIR/data
    SOCK_DIR=$STATE_DIR
    BIN=$REPO/target/release
fi
if [ "${KRG_LOCAL_INSTALLED:-0}" = 1 ]; then
    BIN=/usr/sbin
fi
STATE=$STATE_DIR/state
KEY=$DATA_DIR/cluster.key
SCHED=/config/krg_scheduler
KRGFS=/krg

say() { printf '%s\n' "local-cluster: $*"; }
die() { printf '%s\n' "local-cluster: $*" >&2; exit 1; }
record() { printf '%s\n' "$*" >>"$STATE"; }

addr_of() { if [ "$ROOT" = 1 ]; then echo "10.77.0.$1:$PORT"; else echo "127.0.0.1:$((7610 + $1))"; fi; }
sock_of() { echo "$SOCK_DIR/node$1.sock"; }
mac_of() { printf '02:6b:72:67:00:%02x' "$1"; }
ns_of() { echo "$NS_PREFIX$1"; }
# Run a command in node N's network namespace (only the network: mounts made
# there stay visible to the whole machine, which `ip netns exec` would hide).
in_node() {
    local n=$1
    shift
    if [ "$ROOT" = 1 ] && [ "$n" != 1 ]; then
        nsenter --net="/run/netns/$(ns_of "$n")" -- "$@"
    else
        "$@"
    fi
}
# Close every inherited descriptor above 2 (the caller's terminal tooling may
# leave pipes open): a long-lived process must not hold them, and checkpoint
# refuses a job with a pipe leading out of it. 255 is bash's own script fd
# (close-on-exec).
close_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-"; fi
    done
}
krgadm1() { "$BIN/krgadm" --socket "$(sock_of 1)" "$@"; }

# Poll CMD until it succeeds, for at most SECS seconds.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- build

build() {
    if [ "${KRG_LOCAL_INSTALLED:-0}" = 1 ]; then
        local b
        for b in /usr/sbin/krgd /usr/sbin/krg-init /usr/sbin/krgadm /usr/bin/krg /usr/bin/checkpoint \
            /usr/bin/restart /usr/bin/krgcapset /sbin/mkfs.kdfs /sbin/fsck.kdfs /sbin/mount.kdfs /usr/sbin/kdfsctl; do
            [ -x "$b" ] || die "KRG_LOCAL_INSTALLED=1 but $b is missing: apt install ./target/debian/krg_*.deb first"
        done
        say "KRG_LOCAL_INSTALLED=1: using the installed package's binaries"
        return
    fi
    if [ "${KRG_LOCAL_NO_BUILD:-0}" = 1 ]; then
        say "KRG_LOCAL_NO_BUILD=1: using the binaries in $REPO/target/release"
        return
    fi
    say "building (cargo build --release --workspace; the first build takes a few minutes)"
    # Build as the user who ran sudo when they own the tree, so that target/
    # does not become root's; cargo usually lives in ~/.cargo/bin, which
    # sudo's PATH lacks.
    if [ "$ROOT" = 1 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] &&
        [ "$(stat -c %U "$REPO")" = "$SUDO_USER" ] &&
        { [ ! -e "$REPO/target" ] || [ "$(stat -c %U "$REPO/target")" = "$SUDO_USER" ]; }; then
        sudo -u "$SUDO_USER" -H bash -c 'PATH="$HOME/.cargo/bin:$PATH"; cd "$1" && cargo build --release --workspace' _ "$REPO"
    else
        local h
        if ! command -v cargo >/dev/null; then
            for h in "$HOME" /root ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)"}; do
                if [ -x "$h/.cargo/bin/cargo" ]; then
                    PATH="$h/.cargo/bin:$PATH"
                    if [ -d "$h/.rustup" ]; then export RUSTUP_HOME="$h/.rustup" CARGO_HOME="$h/.cargo"; fi
                    break
                fi
            done
        fi
        command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
        (cd "$REPO" && cargo build --release --workspace)
    fi
}

install_bins() {
    local t=$REPO/target/release b
    if [ "${KRG_LOCAL_INSTALLED:-0}" = 1 ]; then return; fi
    for b in krgd krg-init krgadm krg migrate checkpoint restart krgcapset nfsroot kdfsctl mkfs-kdfs fsck-kdfs mount-kdfs; do
        [ -x "$t/$b" ] || die "$t/$b is missing (did the build fail?)"
    done
    # krg-init is the init of every job krgd starts; krgd finds it next to itself.
    for b in krgd krg-init krgadm krg migrate checkpoint restart krgcapset nfsroot kdfsctl; do
        install -m 755 "$t/$b" "$BIN/$b"
    done
    # cargo forbids '.' in binary names; mount(8), mkfs(8) and fsck(8) look for these.
    install -m 755 "$t/mkfs-kdfs" /sbin/mkfs.kdfs
    install -m 755 "$t/fsck-kdfs" /sbin/fsck.kdfs
    install -m 755 "$t/mount-kdfs" /sbin/mount.kdfs
    say "installed krgd krg-init krgadm krg migrate checkpoint restart krgcapset nfsroot kdfsctl in $BIN, /sbin/mkfs.kdfs, /sbin/fsck.kdfs, /sbin/mount.kdfs"
}

# ---------------------------------------------------------------- network

make_network() {
    # Leftovers of a run whose state file was lost would make `ip` fail.
    ! ip link show "$BRIDGE" >/dev/null 2>&1 ||
        die "interface $BRIDGE already exists (not created by this run: delete it with 'ip link del $BRIDGE')"
    ip link add "$BRIDGE" type bridge
    record "link $BRIDGE"
    ip link set "$BRIDGE" address "$(mac_of 1)"
    ip addr add 10.77.0.1/24 brd + dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local n ns
    for n in $(seq 2 $NODES); do
        ns=$(ns_of "$n")
        ! ip netns list | grep -qw "$ns" || die "network namespace $ns already exists (delete it with 'ip netns del $ns')"
        ip netns add "$ns"
        record "netns $ns"
        ip link add "krgl-v$n" type veth peer name eth0 netns "$ns"
        # Deleted explicitly by `down`: a namespace is freed asynchronously,
        # and its veth peer would linger for a moment after `ip netns del`.
        record "link krgl-v$n"
        ip link set "krgl-v$n" master "$BRIDGE" up
        ip -n "$ns" link set eth0 address "$(mac_of "$n")"
        ip -n "$ns" addr add "10.77.0.$n/24" brd + dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    say "network: bridge $BRIDGE (node 1, 10.77.0.1), namespaces $(ns_of 2)..$(ns_of $NODES) (10.77.0.2-$NODES)"
}

# ---------------------------------------------------------------- daemons

start_krgd() {
    local n=$1 args
    args=(--node-id "$n" --session-id "$SESSION" --listen "$(addr_of "$n")"
        --socket "$(sock_of "$n")" --data-dir "$DATA_DIR/node$n"
        --cluster-key-file "$KEY")
    if [ "$ROOT" = 1 ]; then
        if [ "$n" = 1 ]; then
            args+=(--scheduler-mount "$SCHED")
        else
            args+=(--scheduler-mount "$STATE_DIR/sched/node$n")
        fi
        # Every node asks for /krg; node 1 mounts it, the others find it
        # served on this host and go without (they share one mount namespace).
        args+=(--krg-mount "$KRGFS")
    else
        args+=(--no-scheduler-mount --no-krg-mount)
        # One host, one network namespace: each node its own HTTP port.
        args+=(--http-listen "127.0.0.1:$((7689 + n))")
        local p
        for p in $(seq 1 $NODES); do [ "$p" = "$n" ] || args+=(--peer "$(addr_of "$p")"); done
    fi
    local pre=()
    if [ "$ROOT" = 1 ] && [ "$n" != 1 ]; then pre=(nsenter --net="/run/netns/$(ns_of "$n")" --); fi
    # The subshell execs nsenter (which, without a PID namespace, execs) and
    # setsid (not a group leader: it execs too), so $! is krgd itself.
    (
        close_fds
        RUST_LOG=${RUST_LOG:-info} exec "${pre[@]}" setsid "$BIN/krgd" "${args[@]}" \
            </dev/null >"$STATE_DIR/krgd$n.log" 2>&1
    ) &
    record "pid $! krgd"
}

krgd_up() { [ -S "$(sock_of "$1")" ] && "$BIN/krgadm" --socket "$(sock_of "$1")" cluster status; }
all_present() {
    local out
    out=$(krgadm1 --json nodes status) || return 1
    [ "$(grep -o '"state":"\(present\|online\)"' <<<"$out" | wc -l)" -ge $NODES ]
}
all_online() {
    local out
    out=$(krgadm1 --json nodes status) || return 1
    [ "$(grep -o '"state":"online"' <<<"$out" | wc -l)" -ge $NODES ]
}

start_cluster() {
    local n
    # Node 1 first, so that it is the one serving /krg.
    start_krgd 1
    if [ "$ROOT" = 1 ]; then
        wait_for 30 "the /krg tree of node 1 (log: $STATE_DIR/krgd1.log)" test -d "$KRGFS/nodes"
    fi
    for n in $(seq 2 $NODES); do start_krgd "$n"; done
    for n in $(seq 1 $NODES); do
        wait_for 30 "krgd of node $n (log: $STATE_DIR/krgd$n.log)" krgd_up "$n"
    done
    if [ "$ROOT" = 1 ] && [ ! -e "$SOCK_DIR/krgd.sock" ]; then
        ln -s node1.sock "$SOCK_DIR/krgd.sock"
        record "symlink $SOCK_DIR/krgd.sock"
    fi
    wait_for 30 "node 1 to see all $NODES nodes present" all_present
    say "krgadm cluster start"
    if [ "$ROOT" = 1 ]; then
        krgadm1 cluster start
        wait_for 30 "all $NODES nodes online" all_online
    elif ! krgadm1 cluster start; then
        # krgd accepts membership changes from root only (SO_PEERCRED).
        say "cluster start was refused (above): the $NODES daemons run and see each other as present, but forming the cluster needs root"
        FORMED=0
    else
        wait_for 30 "all $NODES nodes online" all_online
    fi
    echo
    krgadm1 nodes status
    echo
}

# ---------------------------------------------------------------- scheduler

sched_of() { if [ "$1" = 1 ]; then echo "$SCHED"; else echo "$STATE_DIR/sched/node$1"; fi; }

wire_scheduler() {
    local n
    for n in $(seq 1 $NODES); do
        wait_for 15 "the scheduler tree of node $n" test -d "$(sched_of "$n")/probes"
        # Every node loads mem_probe: node 1's policy then sees all 4 nodes.
        mkdir "$(sched_of "$n")/probes/mem_probe"
    done
    mkdir "$SCHED/schedulers/test-scheduler"
    mkdir "$SCHED/schedulers/test-scheduler/echo_policy"
    ln -s "$SCHED/probes/mem_probe/ram_total" "$SCHED/schedulers/test-scheduler/echo_policy/port_mem_total"
    say "scheduler: mem_probe on every node, wired to $SCHED/schedulers/test-scheduler/echo_policy"
}

# ---------------------------------------------------------------- kDFS

# PID of the detached mount.kdfs serving MNT.
kdfs_server_pid() {
    local mnt=$1 p
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "kdfs.* $mnt\( \|$\)"; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

mount_kdfs() {
    local n dir mnt
    for n in $(seq 1 $NODES); do
        dir=$DATA_DIR/kdfs$n
        mkdir -p "$dir"
        mkfs.kdfs --socket "$(sock_of "$n")" --replicas 2 "$dir" 1 >/dev/null
    done
    for n in $(seq 1 $NODES); do # node 1, the root node, first
        dir=$DATA_DIR/kdfs$n
        mnt=/mnt/kdfs/node$n
        mkdir -p "$mnt"
        (close_fds && in_node "$n" mount -t kdfs "$dir" "$mnt" \
            -o "socket=$(sock_of "$n"),keyfile=$KEY,log=$STATE_DIR/kdfs$n.log")
        record "mount $mnt"
        local pid
        pid=$(kdfs_server_pid "$mnt") && record "pid $pid $(cat "/proc/$pid/comm")"
    done
    say "kDFS: $DATA_DIR/kdfs1..$NODES (--replicas 2) mounted at /mnt/kdfs/node1..$NODES"
}

# ---------------------------------------------------------------- demo job

start_demo() {
    install -d -m 1777 /var/chkpt
    rm -f "$STATE_DIR/demo.count"
    # krgcapset marks its parent, the outer sh, which then becomes the job
    # (exec keeps the PID): the job and the `sleep`s it forks are CHECKPOINTABLE.
    (
        cd /
        close_fds
        KRG_SOCKET=$(sock_of 1) setsid sh -c 'krgcapset -d +CHECKPOINTABLE || exit 1
exec sh -c "i=0; while :; do i=\$((i+1)); echo \$i > $1; sleep 1; done"' _ "$STATE_DIR/demo.count" \
            </dev/null >/dev/null 2>"$STATE_DIR/demo.log" &
        echo $! >"$STATE_DIR/demo.pid"
    )
    local pid
    pid=$(cat "$STATE_DIR/demo.pid")
    record "pid $pid sh"
    wait_for 10 "the demo job to count" test -s "$STATE_DIR/demo.count"
    PATH=$BIN:$PATH krgcapset --socket "$(sock_of 1)" --show -k "$pid" | grep -q CHECKPOINTABLE ||
        die "the demo job $pid is not CHECKPOINTABLE"
    say "demo job: PID $pid (CHECKPOINTABLE), counting into $STATE_DIR/demo.count"
}

# ---------------------------------------------------------------- up / down

usage_root() {
    local pid
    pid=$(cat "$STATE_DIR/demo.pid")
    cat <<EOF

krg local cluster is up: $NODES nodes, session $SESSION. Try (as root):

  Cluster (krgadm talks to node 1 via /run/krg/krgd.sock; --socket /run/krg/nodeN.sock for another node):
    krgadm cluster status
    krgadm nodes status
    krgadm nodes del -n 4          # hot-remove node 4 (its processes, then its kDFS files, move first) ...
    krgadm nodes add -n 4          # ... and add it back (or: -m $(mac_of 4), or -a)
    krgadm nodes checkout -n 3-4 --for nobody --until +30m --reason demo   # only nobody's (and root's) jobs there
    krgadm nodes status            # OWNER and UNTIL columns
    krgadm nodes release -n 3-4 --force    # root over another user's checkout

  Scheduler tree (node 1; nodes 2-4 have theirs under $STATE_DIR/sched/nodeN):
    cat $SCHED/probes/mem_probe/ram_free/value
    cat $SCHED/probes/mem_probe/ram_free/nodes
    cat $SCHED/schedulers/test-scheduler/echo_policy/received

  Balancing (busy CAN_MIGRATE processes of node 1 spread over the nodes):
    for t in $SCHED $STATE_DIR/sched/node2 $STATE_DIR/sched/node3 $STATE_DIR/sched/node4; do
      mkdir \$t/probes/krg_load_probe \$t/schedulers/balance \$t/schedulers/balance/balance_policy
      ln -s \$t/probes/krg_load_probe/run_load \$t/schedulers/balance/balance_policy/port_load; done
    sh -c 'krgcapset -d +CAN_MIGRATE; for i in 1 2 3 4; do (while :; do :; done) & done' </dev/null >/dev/null 2>&1
    cat $SCHED/schedulers/balance/balance_policy/decisions   # three moves, to nodes 2, 3 and 4
    krg ps                                                   # then: kill PID ... of the four

  Migration (a process keeps its PIDs, its output, input and exit status):
    krgcapset -d +CAN_MIGRATE                  # this shell's children, and its krg run jobs, may move
    krg run -n 1 -- sh -c 'i=0; while :; do i=\$((i+1)); echo "\$\$ \$i"; sleep 1; done' &
    krg ps                                     # node 1, PID 4096 (its PID in its own namespace)
    migrate 1:4096 3 ; krg ps                  # on node 3 now, same PID; its lines still come out here
    migrate --postcopy 3:4096 2 ; krg ps       # on to node 2 by post-copy: it runs there at once, its memory follows
    kill %1                                    # krg run forwards it: the job ends on node 2
    krg run -n 1 -- sh -c 'i=0; while :; do i=\$((i+1)); echo "hop \$i"; sleep 1; done' </dev/null &
    migrate 1:PID 2 ; migrate 2:PID 3          # PID from krg ps; node 2 steps out of the job's path
    K=\$(pgrep -f -- '--node-id 2 --session'); kill -STOP \$K; sleep 5; kill -CONT \$K
                                               # node 2 silent, then failed: the hop lines still come, from node 3
    krg run -n 2 --per-node 2 -- sh -c 'while :; do echo \$\$; sleep 1; done' </dev/null &
    migrate 2:PID 3                            # one of the two copies (PID from krg ps): node 1 joins it on node 3,
                                               # so it goes on if node 2 fails (its other copy is then lost)
    krg run --detach -n 1 -- sh -c 'for i in \$(seq 60); do echo \$i; sleep 1; done'   # prints where its output goes
    migrate 1:PID 2                            # PID as krg ps shows it: it runs on node 2, its output file stays on node 1
    krg run -t -n 1 -- bash                    # then, from another shell: migrate 1:PID 3 (PID from krg ps)
                                               # the shell goes on, on a terminal of node 3: job control, Ctrl-C, resizes
    sh -c 'for i in \$(seq 20); do echo \$i; sleep 1; done; exit 3' &   # a plain process (no krg run)
    migrate --tree \$! 2; ps -o pid,args -p \$!   # its stand-in keeps its PID here (krg, showing its command line)
    wait \$!; echo \$?                         # its lines came out here; the shell gets its real status: 3 (kill \$! reaches it too)
    python3 -c 'import time; b = b"krg" * (70 << 20); time.sleep(3600)' &
    krgcapset -k \$! -d +CAN_MIGRATE; migrate --postcopy --timings \$! 2   # runs on node 2 at once, its 200 MiB pulled behind it

  kDFS (one namespace; each node's mount in /mnt/kdfs/nodeN):
    cp /etc/services /mnt/kdfs/node2/
    cat /mnt/kdfs/node1/services | head -3
    ls -l /mnt/kdfs/node3/
    kdfsctl --keyfile $KEY status /mnt/kdfs/node1   # every node's store: size, use, inodes; its mirror; who is down
    K=\$(pgrep -f -- '--node-id 2 --session'); kill -STOP \$K; sleep 3; echo more >> /mnt/kdfs/node1/services; kdfsctl --keyfile $KEY status /mnt/kdfs/node1; kill -CONT \$K
                                                # node 2 stopped: node 3, its mirror, serves its files (services lives on node 2);
                                                # let go, node 2 takes its store back (tail $STATE_DIR/krgd2.log)
    flock /mnt/kdfs/node1/services sleep 20 & K=\$(pgrep -f -- '--node-id 2 --session'); kill -STOP \$K; sleep 9; flock -n /mnt/kdfs/node3/services true || echo still held; kill -CONT \$K
                                                # node 1's lock on node 2's file, taken again at node 3 while node 2 is stopped
    cp /etc/hosts /mnt/kdfs/node4/ ; krgadm nodes del -n 4 ; cat /mnt/kdfs/node1/hosts ; krgadm nodes add -n 4
                                                # node 4's kDFS files move to another node before it goes
    mkdir /mnt/kdfs/node2/imp ; kdfsctl replicas 3 /mnt/kdfs/node2/imp ; cp /etc/services /mnt/kdfs/node2/imp/ ; kdfsctl replicas /mnt/kdfs/node1/imp/services
                                                # 3 copies for imp/ and what is made in it (the rest keeps 2): node 2's store on nodes 3 and 4
    mkdir /mnt/kdfs/node1/big ; kdfsctl stripe 1M:4 /mnt/kdfs/node1/big   # files made there: 1 MiB units over 4 nodes
    head -c 8M /dev/urandom > /mnt/kdfs/node2/big/f ; kdfsctl stripe /mnt/kdfs/node3/big/f   # its layout
    md5sum /mnt/kdfs/node1/big/f ; krgadm nodes del -n 3 ; kdfsctl stripe /mnt/kdfs/node1/big/f ; md5sum /mnt/kdfs/node1/big/f ; krgadm nodes add -n 3
                                                # node 3's units move to another holder first: the layout names it, same bytes
    df -h /mnt/kdfs/node1                       # the sum of every store
    setfacl -m u:nobody:--- /mnt/kdfs/node1/services ; setpriv --reuid=nobody --regid=nogroup --clear-groups cat /mnt/kdfs/node3/services
                                                # Permission denied on every node: ACLs are enforced
    head -c 1M /dev/urandom > /mnt/kdfs/node2/held ; exec 7</mnt/kdfs/node3/held ; rm /mnt/kdfs/node1/held
    kill -9 \$(pgrep -f '^/sbin/mount.kdfs $DATA_DIR/kdfs3 ') ; sleep 12 ; ip netns exec krgl-n2 curl -s http://127.0.0.1:7690/metrics | grep reaped_total
                                                # node 3's mount died holding node 2's file open: node 2 closes its handle
                                                # after a lease (10 s) and frees the unlinked file (last: node 3 has no mount now)

  Processes anywhere (krg talks to node 1; any user may run it):
    krg run -n 3 -- sh -c 'ip -o -4 addr show | grep -o "10.77.0.[0-9]*"'   # runs in node 3's network
    krg run -a -- sh -c 'ip -o -4 addr show | grep -o "10.77.0.[0-9]*"'     # every node, lines prefixed
    krg run -a -b -- uname -r                  # identical outputs gathered
    krg run -n 2 -- ps -ef                     # a job's own /proc: its init (PID 1) and ps, nothing of the node's
    krg run -n 2 -- sleep 600 &                # then, from any node:
    krg ps                                     # NODE PID USER %CPU RSS STAT TIME COMMAND
    krg kill -TERM 2:PID                       # NODE:PID as krg ps shows it
    krg push /etc/services /tmp/ -a ; krg get /etc/hostname /tmp -n 1-4
    cat /krg/nodes/*/load ; ls /krg/proc       # the same as files (XCPU sessions in /krg/nodes/N/xcpu)

  Metrics and status page (node 1; nodes 2-4 serve theirs on 127.0.0.1:7690 inside their namespaces):
    curl -s http://127.0.0.1:7690/metrics | grep -E '^krg_(cluster|node_state|raft)'
    xdg-open http://127.0.0.1:7690/            # live: run  krgadm nodes del -n 4  and watch the table change
    ip netns exec $(ns_of 2) curl -s http://127.0.0.1:7690/status.json

  Man pages and completions (generated from the binaries; the package installs them):
    krgadm --generate man | man -l -           # also: krgd --generate krgd.toml | man -l -
    source <(krgadm --generate bash)           # then: krgadm nodes <TAB><TAB>

  Checkpoint / restart (demo job PID $pid counts in $STATE_DIR/demo.count):
    krgcapset --show -k $pid
    checkpoint $pid
    cat /var/chkpt/$pid/description_v1.txt
    kill $pid; restart $pid 1
    cat $STATE_DIR/demo.count       # counting on from the checkpointed value
    krgcapset -d +CHECKPOINTABLE ; krg run -n 1 -- sh -c 'while :; do date +%T; sleep 1; done' &
    J=\$(pgrep -f '^sh -c while') ; checkpoint \$J ; kill %1 ; restart \$J 1   # a krg job: back as a detached job
    sleep 1000 & krgcapset -k \$! -d +CHECKPOINTABLE,CAN_MIGRATE ; migrate \$! 2 ; checkpoint \$!   # saved on node 2; prints restart 2:PID 1
    krgcapset -d +CHECKPOINTABLE,CAN_MIGRATE ; sh -c 'sleep 1000 | cat' & S=\$!   # an application over two nodes:
    migrate \$(pgrep -P \$S sleep) 2 ; checkpoint --kill \$S ; restart \$S 1 ; krg ps   # sleep back on node 2 behind its stand-in
    K=\$(pgrep -f -- '--node-id 2 --session'); checkpoint --kill \$S ; kill -STOP \$K ; sleep 3 ; restart \$S 2 ; krg ps ; kill -CONT \$K
                                 # node 2 silent (failed): its part runs on node 1, from its copy in /var/chkpt/\$S/parts/2/
    sh -c 'seq 3000000 | cat | { n=0; while read l; do n=\$((n+1)); done; echo \$n; }' & S=\$!   # checkpointed mid-stream:
    migrate \$(pgrep -P \$S cat) 2 ; checkpoint --kill \$S ; restart \$S 1   # prints 3000000: no line lost on the way (checkpoint says what input it kept)

  Logs: $STATE_DIR/krgd<N>.log, $STATE_DIR/kdfs<N>.log
  Stop everything: sudo $REPO/tests/local-cluster.sh down
EOF
}

usage_user() {
    cat <<EOF

krg local cluster is up: $NODES nodes on 127.0.0.1:7611-7614, session $SESSION$(
        [ "${FORMED:-1}" = 1 ] || printf '%s' ' (not formed: krgd lets only root run cluster start, nodes add/del)').
  $BIN/krgadm --socket $(sock_of 1) cluster status
  $BIN/krgadm --socket $(sock_of 1) nodes status
  $BIN/krgadm --socket $(sock_of 1) nodes del -n 4
  $BIN/krgadm --socket $(sock_of 1) nodes add -n 4
  curl -s http://127.0.0.1:7690/metrics | grep -E '^krg_(cluster|node_state)'   # node N: port 7689+N
  xdg-open http://127.0.0.1:7690/                                                 # the live status page
Skipped because this is not root: the scheduler tree and kDFS (FUSE mounts
need root), the checkpoint demo (krgd follows forks with the proc connector,
which needs root; restart needs CAP_CHECKPOINT_RESTORE). Run with sudo for them.
  Logs: $STATE_DIR/krgd<N>.log
  Stop: $REPO/tests/local-cluster.sh down
EOF
}

do_up() {
    # `up` wipes DATA_DIR: never a directory that holds something else
    if [ -n "$(ls -A "$DATA_DIR" 2>/dev/null)" ] && [ ! -e "$DATA_DIR/cluster.key" ]; then
        die "$DATA_DIR is not empty and holds no local cluster (no cluster.key): not wiping it"
    fi
    if [ -s "$STATE" ]; then
        say "a local cluster is already recorded in $STATE: stopping it first"
        do_down
    fi
    build
    mkdir -p "$STATE_DIR" "$SOCK_DIR"
    : >"$STATE"
    UP_DONE=0
    trap 'if [ "$UP_DONE" = 0 ]; then say "up failed; cleaning up (logs were in $STATE_DIR)" >&2; do_down >&2; fi' EXIT
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    (umask 077 && head -c 32 /dev/urandom | base64 >"$KEY")
    if [ "$ROOT" = 1 ]; then
        install_bins
        export PATH=$BIN:/sbin:$PATH
        make_network
    else
        say "not root: loopback only; skipping the scheduler tree, kDFS and the checkpoint demo (they need root)"
    fi
    start_cluster
    if [ "$ROOT" = 1 ]; then
        wire_scheduler
        mount_kdfs
        start_demo
        usage_root
    else
        usage_user
    fi
    UP_DONE=1
}

# Does PID still run the program recorded for it?
pid_is() {
    local pid=$1 comm=$2
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

term_pid() {
    local pid=$1 comm=$2
    pid_is "$pid" "$comm" || return 0
    # The demo job leads its own process group (with its `sleep`).
    if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
        kill -TERM -- "-$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

stop_pid() {
    local pid=$1 comm=$2 i
    pid_is "$pid" "$comm" || return 0
    term_pid "$pid" "$comm"
    for i in $(seq 50); do
        pid_is "$pid" "$comm" || return 0
        sleep 0.2
    done
    say "PID $pid ($comm) did not stop on SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

do_down() {
    if [ ! -e "$STATE" ]; then
        say "nothing recorded in $STATE: nothing to stop"
        return 0
    fi
    local kind a b line
    # kDFS mounts first, while the krgds still serve them.
    while read -r kind a b; do
        [ "$kind" = mount ] || continue
        # (/proc/mounts, not mountpoint: a mount whose mount.kdfs died
        # answers ENOTCONN to the stat mountpoint makes)
        if grep -q " $a fuse" /proc/mounts; then
            umount "$a" 2>/dev/null || umount -l "$a" || say "could not unmount $a"
        fi
    done <"$STATE"
    # Processes, newest first (demo job, mount.kdfs servers, then the krgds;
    # krgd unmounts its scheduler tree on SIGTERM). The krgds are told all
    # at once: each stops its jobs before it unmounts its trees, and a job
    # of one node holds copies of every node's trees (its own mount
    # namespace, on a host whose mounts are private).
    tac "$STATE" | while read -r kind a b; do
        if [ "$kind" = pid ] && [ "$b" = krgd ]; then term_pid "$a" "$b"; fi
    done
    tac "$STATE" | while read -r kind a b; do
        if [ "$kind" = pid ]; then stop_pid "$a" "$b"; fi
    done
    # A krgd that had to be SIGKILLed leaves its trees mounted.
    for line in "$SCHED" "$KRGFS" "$STATE_DIR"/sched/node*; do
        if grep -q " $line fuse" /proc/mounts; then
            umount -l "$line" || true
        fi
    done
    tac "$STATE" | while read -r kind a b; do
        case $kind in
        netns) ip netns del "$a" 2>/dev/null || true ;;
        link) ip link del "$a" 2>/dev/null || true ;;
        symlink) if [ -L "$a" ]; then rm -f "$a"; fi ;;
        esac
    done
    rm -rf "$STATE_DIR/sched"
    rm -f "$STATE" "$STATE_DIR/demo.pid"
    say "stopped: processes, mounts, namespaces and links of the local cluster are gone (data stays in $DATA_DIR until the next up)"
}

do_status() {
    if [ ! -s "$STATE" ]; then
        say "not running (no $STATE)"
        return 0
    fi
    local kind a b
    while read -r kind a b; do
        case $kind in
        pid) if pid_is "$a" "$b"; then echo "process $a ($b): running"; else echo "process $a ($b): gone"; fi ;;
        mount) if mountpoint -q "$a"; then echo "mount $a: mounted"; else echo "mount $a: not mounted"; fi ;;
        netns) if ip netns list | grep -qw "$a"; then echo "netns $a: present"; else echo "netns $a: gone"; fi ;;
        link) if ip link show "$a" >/dev/null 2>&1; then echo "link $a: present"; else echo "link $a: gone"; fi ;;
        symlink) echo "symlink $a -> $(readlink "$a" 2>/dev/null || echo '(gone)')" ;;
        esac
    done <"$STATE"
    echo
    krgadm1 cluster status || true
    echo
    krgadm1 nodes status || true
}

case ${1:-} in
up) do_up ;;
down) do_down ;;
status) do_status ;;
*)
    echo "usage: $0 up|down|status   (as root for the full cluster; see the top of this file)" >&2
    exit 2
    ;;
esac
