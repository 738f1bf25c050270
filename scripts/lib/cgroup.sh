# shellcheck shell=bash
# cgroup.sh: the CPU cgroups of this machine, for scripts/setup-host.sh and
# scripts/bench.sh. Sourced:
#
#   . scripts/lib/cgroup.sh
#   cpu_root              # where the CPU controller is mounted:
#                         # /sys/fs/cgroup/cpu (cgroup v1), else /sys/fs/cgroup (v2)
#   cpu_weight_file       # its weight file: cpu.shares (v1) or cpu.weight (v2)
#   cpu_cgroup PID        # PID's CPU cgroup, relative to cpu_root (/berth-dockerd)

cpu_root() {
  if [[ -d /sys/fs/cgroup/cpu ]]; then echo /sys/fs/cgroup/cpu; else echo /sys/fs/cgroup; fi
}

cpu_weight_file() {
  if [[ -d /sys/fs/cgroup/cpu ]]; then echo cpu.shares; else echo cpu.weight; fi
}

# The cpu line of /proc/PID/cgroup (v1: "N:cpu,cpuacct:/path"), else the
# unified one (v2: "0::/path").
cpu_cgroup() {
  grep -E '^[0-9]+:([^:]*,)?cpu(,[^:]*)?:|^0::' "/proc/$1/cgroup" | head -1 | cut -d: -f3
}
