# bench/lib.sh: helpers shared by accept.sh and relay.sh (sourced, not run).
# Needs READY_TIMEOUT (seconds) set by the caller.

stop_pid() { # pid [signal]: signal (TERM), wait up to 10 s, then SIGKILL
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "WARNING: pid $pid ignored SIG$sig for 10 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}

free_port() { # -> a free TCP port on 127.0.0.1
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port -> 0 when something accepts on 127.0.0.1:port
    local i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

sluice_config_head() { # script port connections_per_ip -> the start of a sluice.toml
    # What both benchmarks' configs share: names, dirs, a plain listener on
    # loopback, limits far above the load they put on it, logs on stderr.
    cat <<EOF
# written by bench/$1
hostname = "bench.sluice.test"
spool_dir = "spool"
state_dir = "state"

[[listen]]
address = "127.0.0.1:$2"
starttls = false

[limits]
connections = 1000
connections_per_ip = $3
command_timeout = "5m"
data_timeout = "10m"
max_message_size = "36 MiB"

[syslog]
target = "stderr"
EOF
}

# The [queue] and [dns] sections of a relay row's sluice.toml: 50
# deliveries at once, 20 per destination; bench.test's MX is sink.bench,
# which is the sink's port (loopback only: `dns` is the resolver, port 1
# for none).
sluice_relay_tail() { # dns sinkport
    cat <<EOF

[queue]
concurrency = 50
concurrency_per_destination = 20

[dns]
servers = ["$1"]
static = { "sink.bench" = ["127.0.0.1:$2"] }
static_mx = { "bench.test" = [[10, "sink.bench"]] }
EOF
}

# Starts $PROBE (if set) 1.5 s from now beside a run, {pid} replaced by
# the daemon's pid $1; sets PROBE_PID (empty without a probe) to wait for.
start_probe() { # pid
    PROBE_PID=''
    [ -n "${PROBE:-}" ] || return 0
    { sleep 1.5; bash -c "${PROBE//\{pid\}/$1}" 2>&1; } &
    PROBE_PID=$!
}

# utime + stime of a process (clock ticks), empty if it is gone.
proc_cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }

# The median of the numbers on stdin (spaces or lines); FAIL if any run
# failed (FAIL sorts first) or there is none.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0 || v[1] == "FAIL") print "FAIL"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
