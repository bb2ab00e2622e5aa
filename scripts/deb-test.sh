#!/usr/bin/env bash
# The Debian packages (issue 18), as an operator gets them: builds them with
# `make deb` plus a second set one Debian revision higher, then, as root, on
# this machine (CI's is disposable): installs both with dpkg -i, checks what
# was installed, runs the installed binaries as the installed user with the
# installed configs (an agent's samples reach the aggregator's WebSocket and
# REST API), upgrades keeping an edited conffile, and purges.
#
# Prints `ok: ...` / `FAIL: ...` per check and ends with
#     deb: P passed, F failed, S skipped
# which scripts/test-summary.sh adds to its totals. Not root: one skipped
# check (dpkg -i needs root). hostpulse packages already installed (not by
# this script): refuses (one failed check) rather than replace them.
set -uo pipefail
cd "$(dirname "$0")/.."

RUNNER=deb
# shellcheck source=scripts/checks.sh
. scripts/checks.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "skipped: the package tests install with dpkg -i and need root (CI runs them)"
    summary 1
    exit 0
fi

PKGS=(hostpulse-agent hostpulse-aggregator)
for p in "${PKGS[@]}"; do
    if dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^.[^n]'; then
        fail "$p is already installed on this machine; not replacing it (dpkg --purge $p to run these tests)"
        summary 0
        exit 1
    fi
done

pids=()
work=$(mktemp -d)
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    for p in "${PKGS[@]}"; do
        if dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^.[^n]'; then
            dpkg --purge "$p" >/dev/null 2>&1 || echo "cleanup: dpkg --purge $p failed" >&2
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

debs=${CARGO_TARGET_DIR:-target}/debian
rm -f "$debs"/hostpulse-*.deb
if ! make --no-print-directory deb; then
    fail "make deb builds both packages"
    summary 0
    exit 1
fi
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="hostpulse-agent"))')
arch=$(dpkg --print-architecture)
check "make deb wrote hostpulse-{agent,aggregator}_${version}-1_${arch}.deb in $debs" \
    test -f "$debs/hostpulse-agent_${version}-1_${arch}.deb" -a -f "$debs/hostpulse-aggregator_${version}-1_${arch}.deb"
# Copied aside: cargo-deb deletes a package's older .debs from target/debian
# when it writes a new one, even to another --output.
mkdir -p "$work/v1" "$work/v2"
cp "$debs"/hostpulse-*_"${version}"-1_"${arch}".deb "$work/v1/"
agent_deb=$work/v1/hostpulse-agent_${version}-1_${arch}.deb
agg_deb=$work/v1/hostpulse-aggregator_${version}-1_${arch}.deb
# The upgrade: the same build, one Debian revision higher.
for p in "${PKGS[@]}"; do
    cargo deb --no-build -p "$p" --deb-revision 2 -o "$work/v2/" >/dev/null || fail "cargo deb --deb-revision 2 -p $p"
done
check "the upgrade packages carry revision 2" test -f "$work/v2/hostpulse-agent_${version}-2_${arch}.deb" -a -f "$work/v2/hostpulse-aggregator_${version}-2_${arch}.deb"
for d in "$agent_deb" "$agg_deb"; do
    echo "== $(basename "$d"): $(stat -c %s "$d") bytes"
    dpkg-deb -c "$d" | awk '{print "    " $1, $3, $6}'
done

# --- install -------------------------------------------------------------
# A store left by an aggregator started by hand as root, before the package:
# the package makes it the service user's.
if [ ! -e /var/lib/hostpulse ]; then
    mkdir -p /var/lib/hostpulse && touch /var/lib/hostpulse/store.redb
fi
check "dpkg -i installs both packages" dpkg -i "$agent_deb" "$agg_deb"
status_of() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null; }
check "both are installed at ${version}-1" bash -c "[ \"\$(dpkg-query -W -f='\${db:Status-Abbrev}\${Version}' hostpulse-agent)\" = 'ii ${version}-1' ] && [ \"\$(dpkg-query -W -f='\${db:Status-Abbrev}\${Version}' hostpulse-aggregator)\" = 'ii ${version}-1' ]"

mode_owner() { [ "$(stat -c '%a %U:%G' "$1")" = "$2" ] || { echo "$1: $(stat -c '%a %U:%G' "$1"), want $2"; return 1; }; }
check "binaries in /usr/bin, 755 root" bash -c "$(declare -f mode_owner); mode_owner /usr/bin/hostpulse-agent '755 root:root' && mode_owner /usr/bin/hostpulse-aggregator '755 root:root'"
check "configs in /etc/hostpulse, 644 root, as shipped" bash -c "cmp /etc/hostpulse/agent.toml deploy/agent.toml && cmp /etc/hostpulse/aggregator.toml deploy/aggregator.toml && $(declare -f mode_owner); mode_owner /etc/hostpulse/agent.toml '644 root:root'"
# cargo-deb installs units in /usr/lib/systemd/system (Debian's place since
# merged /usr; /lib is a link to usr/lib, so /lib/systemd/system finds them).
check "units in /usr/lib/systemd/system, as in deploy/" bash -c "cmp /usr/lib/systemd/system/hostpulse-agent.service deploy/hostpulse-agent.service && cmp /usr/lib/systemd/system/hostpulse-aggregator.service deploy/hostpulse-aggregator.service && dpkg -L hostpulse-agent | grep -qx /usr/lib/systemd/system/hostpulse-agent.service"
check "the units are found under /lib/systemd/system too (merged /usr)" test -f /lib/systemd/system/hostpulse-agent.service -a -f /lib/systemd/system/hostpulse-aggregator.service
check "the installed binaries report version $version" bash -c "/usr/bin/hostpulse-agent --version | grep -qx 'hostpulse-agent $version' && /usr/bin/hostpulse-aggregator --version | grep -qx 'hostpulse-aggregator $version'"
check "conffiles: /etc/hostpulse/agent.toml" bash -c "dpkg-query -W -f='\${Conffiles}' hostpulse-agent | grep -qE '^ /etc/hostpulse/agent.toml [0-9a-f]{32}\$'"
check "conffiles: /etc/hostpulse/aggregator.toml" bash -c "dpkg-query -W -f='\${Conffiles}' hostpulse-aggregator | grep -qE '^ /etc/hostpulse/aggregator.toml [0-9a-f]{32}\$'"
check "the agent depends on libc (and libgcc, passwd) only" bash -c "deps=\$(dpkg-query -W -f='\${Depends}' hostpulse-agent); echo \"Depends: \$deps\"; ! tr ',' '\n' <<<\"\$deps\" | sed 's/^ *//; s/ .*//' | grep -vxE 'libc6|libgcc-s1|passwd'"
check "user hostpulse: system uid, group hostpulse, no login" bash -c "IFS=: read -r _ _ uid gid _ home shell < <(getent passwd hostpulse) && [ \"\$uid\" -lt 1000 ] && [ \"\$(getent group hostpulse | cut -d: -f3)\" = \"\$gid\" ] && [ \"\$shell\" = /usr/sbin/nologin ] && [ \"\$home\" = /nonexistent ] && [ ! -e /nonexistent ]"
check "state directory /var/lib/hostpulse, 750 hostpulse" bash -c "$(declare -f mode_owner); mode_owner /var/lib/hostpulse '750 hostpulse:hostpulse'"
check "what was in the state directory is hostpulse's" bash -c "[ -z \"\$(find /var/lib/hostpulse ! -user hostpulse)\" ] || { find /var/lib/hostpulse ! -user hostpulse -printf '%p %u\\n'; exit 1; }"
check "both units enabled (multi-user.target.wants links to the installed units)" bash -c "for u in hostpulse-agent hostpulse-aggregator; do [ \"\$(readlink -f /etc/systemd/system/multi-user.target.wants/\$u.service)\" = /usr/lib/systemd/system/\$u.service ] || { ls -l /etc/systemd/system/multi-user.target.wants/; exit 1; }; done"
running_installed() { for e in /proc/[0-9]*/exe; do case "$(readlink "$e" 2>/dev/null)" in /usr/bin/hostpulse-agent | /usr/bin/hostpulse-aggregator) echo "running: $e"; return 0 ;; esac; done; return 1; }
check "postinst started neither binary" bash -c "$(declare -f running_installed); ! running_installed"
check "systemd-analyze verify passes on the installed units" bash -c "out=\$(systemd-analyze verify /usr/lib/systemd/system/hostpulse-agent.service /usr/lib/systemd/system/hostpulse-aggregator.service 2>&1); rc=\$?; echo \"\$out\"; [ \$rc -eq 0 ] && [ -z \"\$out\" ]"

# --- run: installed binaries, installed configs, installed user ---------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ingest=127.0.0.1:$(free_port)
http=127.0.0.1:$(free_port)
host=deb-test-$$
# wait_for SECS CMD...: polls CMD every 0.2 s until it succeeds or SECS pass.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
setpriv --reuid=hostpulse --regid=hostpulse --init-groups /usr/bin/hostpulse-aggregator --config /etc/hostpulse/aggregator.toml \
    --ingest-listen "$ingest" --http-listen "$http" >"$work/aggregator.log" 2>&1 &
agg_pid=$!
pids+=("$agg_pid")
check "the installed aggregator, as hostpulse with /etc/hostpulse/aggregator.toml, answers /healthz within 30 s" \
    wait_for 30 curl -fsS "http://$http/healthz"
setpriv --reuid=hostpulse --regid=hostpulse --init-groups /usr/bin/hostpulse-agent --config /etc/hostpulse/agent.toml \
    --aggregator "http://$ingest" --hostname "$host" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
check "an update on host.$host.cpu reaches the aggregator's WebSocket within 30 s" \
    scripts/ws-wait-update.py "$http" "host.$host.cpu" 30
host_online_with_cpu() {
    curl -fsS "http://$http/api/v1/hosts/$host" | python3 -c '
import json, sys
h = json.load(sys.stdin)
pct = h["latest"]["cpu"]["payload"]["total_pct"]
assert h["online"] is True and 0 <= pct <= 100, h'
}
check "/api/v1/hosts/$host shows it online with a CPU figure" wait_for 30 host_online_with_cpu
check "both ran as the hostpulse user" bash -c "[ \"\$(stat -c %U /proc/$agent_pid)\" = hostpulse ] && [ \"\$(stat -c %U /proc/$agg_pid)\" = hostpulse ] && [ \"\$(readlink /proc/$agent_pid/exe)\" = /usr/bin/hostpulse-agent ]"
kill "$agent_pid" "$agg_pid" 2>/dev/null
wait "$agent_pid" "$agg_pid" 2>/dev/null
pids=()
if [ "$failed" -gt 0 ]; then
    echo "    aggregator log:"; tail -n 15 "$work/aggregator.log" | sed 's/^/      /'
    echo "    agent log:"; tail -n 15 "$work/agent.log" | sed 's/^/      /'
fi

# --- upgrade keeps a locally edited conffile ------------------------------
sed -i 's/^interval_ms = .*/interval_ms = 2000/' /etc/hostpulse/agent.toml
echo '# edited on this node by deb-test' >>/etc/hostpulse/agent.toml
check "dpkg -i of revision 2 upgrades both (no prompt: stdin is /dev/null)" \
    dpkg -i "$work/v2/hostpulse-agent_${version}-2_${arch}.deb" "$work/v2/hostpulse-aggregator_${version}-2_${arch}.deb" </dev/null
check "both are now ${version}-2" bash -c "[ \"\$(dpkg-query -W -f='\${Version}' hostpulse-agent hostpulse-aggregator | tr -d '\n')\" = '${version}-2${version}-2' ]"
check "the edited agent.toml survived the upgrade" bash -c "grep -qx 'interval_ms = 2000' /etc/hostpulse/agent.toml && tail -n 1 /etc/hostpulse/agent.toml | grep -qx '# edited on this node by deb-test' && ! ls /etc/hostpulse/*.dpkg-* 2>/dev/null"
check "the upgraded agent reads the edited config" bash -c "/usr/bin/hostpulse-agent --check-config --config /etc/hostpulse/agent.toml | grep -qx 'interval_ms = 2000'"

# --- purge removes what the packages created ------------------------------
check "dpkg --purge removes both" dpkg --purge hostpulse-agent hostpulse-aggregator
check "both are gone from dpkg's database" bash -c "! dpkg-query -W -f='\${db:Status-Abbrev}\n' hostpulse-agent hostpulse-aggregator 2>/dev/null | grep -q '^.[^n]'"
check "binaries, units, configs and /etc/hostpulse are gone" bash -c "for f in /usr/bin/hostpulse-agent /usr/bin/hostpulse-aggregator /usr/lib/systemd/system/hostpulse-agent.service /usr/lib/systemd/system/hostpulse-aggregator.service /etc/hostpulse; do [ ! -e \$f ] || { echo \"left: \$f\"; exit 1; }; done"
check "the enablement links are gone" bash -c "! ls /etc/systemd/system/*/hostpulse-* 2>/dev/null"
check "/var/lib/hostpulse is gone" test ! -e /var/lib/hostpulse
check "the hostpulse user and group are gone" bash -c "! getent passwd hostpulse && ! getent group hostpulse"

summary 0
[ "$failed" -eq 0 ]
