#!/bin/sh
# krg plug-in probe: disk usage of one file system.
#
# Registry line (/etc/krg/plugins.conf):
#   disk_probe probe /usr/local/lib/krg/plugins/disk_probe.sh [PATH]
# PATH is any file or directory on the file system to watch (default /).
#
# Protocol (see docs/scheduler.md): declare the sources, say "ready", then
# answer every "sample" line with one "<source> <value>" line per source
# and "end". krgd closes stdin to stop the plug-in.
path=${1:-/}

echo "source disk_total bytes"
echo "source disk_free bytes"
echo "source disk_used_percent percent"
echo "period 5000"
echo "ready"

while read -r cmd; do
    [ "$cmd" = sample ] || continue
    # POSIX df: 1K-blocks Used Available; -P keeps one line per file system.
    set -- $(df -P -k "$path" 2>/dev/null | awk 'NR == 2 { print $2, $3, $4 }')
    if [ $# -ne 3 ]; then
        echo "disk_probe: cannot read df for $path" >&2
        exit 1
    fi
    total=$(( $1 * 1024 ))
    free=$(( $3 * 1024 ))
    used_pct=$(awk -v u="$2" -v a="$3" 'BEGIN { if (u + a > 0) printf "%.2f", 100 * u / (u + a); else print 0 }')
    echo "disk_total $total"
    echo "disk_free $free"
    echo "disk_used_percent $used_pct"
    echo "end"
done
