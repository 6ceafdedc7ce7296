#!/usr/bin/env bash
# Run the test suite on another x86-64 CPU model, emulated, from a machine that has a wider one:
# an AVX2-only AMD EPYC (QEMU's EPYC-Rome: AVX2 and FMA, no AVX-512) by default, so that a
# developer whose CPU has AVX-512 can check what users without it get (docs/testing.md).
#
#   sudo scripts/emulated_cpu.sh build DIR                 # Debian 12, Java, this commit and its .venv
#   sudo scripts/emulated_cpu.sh run DIR                   # the suite as .ci/run runs it (install done)
#   sudo scripts/emulated_cpu.sh run DIR -- make test      # or any command, in the copy
#   CPU=Haswell sudo scripts/emulated_cpu.sh run DIR       # another QEMU CPU model
#
# Needs root (debootstrap, chroot), debootstrap, qemu-system-x86 10 or newer, e2fsprogs 1.43+ and
# network for the packages. QEMU's software CPU runs Python about 18x slower than the host, so the
# suite's own time limits, not the CPU's features, are what may fail there. ACCEL=kvm (not
# tried yet) should run at native speed where KVM works: the guest sees only the model's CPUID
# flags, so its kernel does not enable AVX-512 and AVX-512 instructions fault as on that CPU.
set -euo pipefail

usage() { echo "usage: sudo $0 build DIR | run DIR [-- COMMAND...]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action=$1 dir=$2
shift 2
[[ ${1:-} == -- ]] && shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$dir/root

build() {
    [[ -e $dir ]] && { echo "error: $dir exists; remove it or pick another DIR" >&2; exit 2; }
    mkdir -p "$dir/share"
    echo "==> Debian 12 with Python 3.11, Java 17 and a kernel into $root (a few minutes)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,git,make,openjdk-17-jre-headless,procps,iproute2,ca-certificates,libgomp1,linux-image-amd64,udev,kmod,systemd-sysv \
        bookworm "$root" http://deb.debian.org/debian >"$dir/debootstrap.log"
    # the host's certificates, so that pip in the chroot works behind the same proxy
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    git clone -q "$repo" "$root/root/recsys-dvc"
    echo "==> make setup in the copy ($(git -C "$repo" rev-parse --short HEAD))"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    trap 'umount "$root/proc" "$root/dev"' EXIT
    # a clean environment (the host's pip settings name its own paths), proxies kept
    chroot "$root" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        bash -c 'cd /root/recsys-dvc && make setup' >"$dir/setup.log"
    cat >"$root/init.sh" <<'EOF'
#!/bin/bash
# PID 1 of the guest: mount what the suite needs, run /mnt/share/cmd.sh, power off.
mount -t proc proc /proc; mount -t sysfs sys /sys 2>/dev/null; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
mount -t tmpfs -o size=8g tmpfs /tmp
modprobe 9pnet_virtio; modprobe 9p
mount -t 9p -o trans=virtio,version=9p2000.L share /mnt/share
ip link set lo up
hostname guest
printf '127.0.0.1 localhost\n127.0.1.1 guest\n' >/etc/hosts
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
bash /mnt/share/cmd.sh >/mnt/share/out.log 2>&1
echo $? >/mnt/share/rc
sync
echo 1 >/proc/sys/kernel/sysrq; echo o >/proc/sysrq-trigger; sleep 10; poweroff -f
EOF
    chmod +x "$root/init.sh"
    mkdir -p "$root/mnt/share"
    trap - EXIT
    umount "$root/proc" "$root/dev"
    echo "==> disk image $dir/disk.img"
    mke2fs -q -t ext4 -d "$root" -L root "$dir/disk.img" 16G
    echo "==> ready: sudo $0 run $dir"
}

run() {
    [[ -f $dir/disk.img ]] || { echo "error: no $dir/disk.img; run: sudo $0 build $dir" >&2; exit 2; }
    local kernel initrd qemu_major
    # QEMU 7.2's software CPU gets AVX2's VPGATHERDQ wrong (every lane reads element 0), which
    # breaks numpy's AVX2 argsort there: a failure of the emulator, not of the suite.
    qemu_major=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
    if [[ ${ACCEL:-tcg} == tcg* && ${qemu_major:-0} -lt 10 ]]; then
        echo "error: QEMU ${qemu_major:-?}.x emulates AVX2 gathers wrongly; use QEMU 10 or newer (Debian 12: bookworm-backports)" >&2
        exit 2
    fi
    kernel=$(ls "$root"/boot/vmlinuz-* | tail -1)
    initrd=$(ls "$root"/boot/initrd.img-* | tail -1)
    {
        cat <<'GUEST'
set -o pipefail
grep -m1 'model name' /proc/cpuinfo
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|fma|avx512[a-z]*)$' | sort | tr '\n' ' '; echo
cd /root/recsys-dvc && export PATH=$PWD/.venv/bin:$PATH && git log --oneline -1
# the emulator itself: numpy's AVX2 argsort relies on gathers that QEMU 7.2 got wrong
python -c 'import numpy as np; a = np.random.default_rng(0).integers(0, 10**6, 100_000); print("emulator check, np.argsort sorts:", bool((np.diff(a[np.argsort(a)]) >= 0).all()))'
GUEST
        if [[ $# -gt 0 ]]; then
            printf '%q ' "$@"
            echo
        else
            # .ci/run without the install: the S3 server, then the README's test command
            echo 'port=$(python -c "import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])")'
            echo 'trap "recsys s3-dev stop" EXIT'
            echo 'recsys s3-dev start --port "$port" && export RECSYS_TEST_S3_ENDPOINT=http://127.0.0.1:$port'
            echo 'make test'
        fi
    } >"$dir/share/cmd.sh"
    rm -f "$dir/share/rc" "$dir/share/out.log"
    echo "==> booting on ${CPU:-EPYC-Rome} (${ACCEL:-tcg,thread=multi}); output in $dir/share/out.log"
    qemu-system-x86_64 -machine q35 -accel "${ACCEL:-tcg,thread=multi}" -cpu "${CPU:-EPYC-Rome}" \
        -smp "$(nproc)" -m 16G -nographic -no-reboot \
        -kernel "$kernel" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 init=/init.sh quiet panic=1" \
        -drive "file=$dir/disk.img,format=raw,if=virtio,cache=unsafe" \
        -virtfs "local,path=$dir/share,mount_tag=share,security_model=none" >"$dir/console.log" 2>&1
    cat "$dir/share/out.log"
    [[ -f $dir/share/rc ]] || { echo "error: the guest did not finish (see $dir/console.log)" >&2; exit 1; }
    exit "$(cat "$dir/share/rc")"
}

case $action in
    build) build ;;
    run) run "$@" ;;
    *) usage ;;
esac
