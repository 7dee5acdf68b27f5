#!/usr/bin/env bash
# Starts the Docker engine tests/image.rs builds and runs the image with, and makes the base
# images the Dockerfile names, since no container registry is reachable from CI:
# - Debian's `docker.io` package (installed with apt-get when dockerd is missing), one
#   `dockerd` of our own: data root under /var/lib/firehose-edge-docker, socket
#   /run/firehose-edge-docker.sock, no bridge and no iptables (builds and containers use the
#   host's network, and so reach apt's mirror and the crate registry as the host does);
# - `debian:bookworm-slim` from `debootstrap --variant=minbase bookworm`, from the mirror apt
#   is configured with, trimmed as the official slim image is, and `docker import`ed;
# - a stand-in for `rust:<version>-slim-bookworm`: that rootfs with gcc and libc6-dev (as the
#   official image has), this machine's Rust toolchain at the official image's paths and ENV,
#   and this machine's CA certificates (its egress may re-sign TLS with a local CA).
# Needs root (CI runs as root). Idempotent, and quick once the engine runs and the images exist
# (they live in the engine's data root, so they are made once per machine). Fails, with the
# reason, where the engine cannot start. The last line of output is the DOCKER_HOST to use.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root=/var/lib/firehose-edge-docker
sock=/run/firehose-edge-docker.sock
exec_root=/run/firehose-edge-docker
export DOCKER_HOST="unix://$sock"

[ "$(id -u)" = 0 ] || die "the Docker engine for tests/image.rs needs root (to install docker.io and run dockerd)"

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to install $*"
    log "installing $* with apt-get"
    apt-get update -qq >&2
    # policy-rc.d (where present) keeps the package's own daemon from starting: ours has its
    # own data root and socket.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

command -v dockerd >/dev/null 2>&1 || apt_install docker.io
command -v docker >/dev/null 2>&1 || die "no docker CLI (the docker.io package provides one)"

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
    log "engine already running at $DOCKER_HOST"
else
    mkdir -p "$root" "$exec_root"
    log "starting dockerd (data root $root/data, log $root/dockerd.log)"
    # A daemon of the machine, like the system's would be: it outlives this script and serves
    # later runs; `kill "$(cat $exec_root/dockerd.pid)"` stops it.
    setsid nohup dockerd \
        --data-root "$root/data" \
        --exec-root "$exec_root" \
        --pidfile "$exec_root/dockerd.pid" \
        --host "$DOCKER_HOST" \
        --iptables=false --bridge=none \
        >>"$root/dockerd.log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 1 120); do
        engine_up && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if ! engine_up; then
        tail -n 20 "$root/dockerd.log" >&2 || true
        die "the Docker engine did not start (it needs root and kernel support for namespaces, cgroups and overlayfs); see $root/dockerd.log"
    fi
    log "engine $(docker version --format '{{.Server.Version}}') running at $DOCKER_HOST"
fi

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The tags the Dockerfile builds from; the stand-ins below are made for exactly these.
debian_tag=debian:bookworm-slim
rust_tag="$(awk 'toupper($1) == "FROM" && $2 ~ /^rust:/ { print $2; exit }' Dockerfile)"
[[ "$rust_tag" =~ ^rust:([0-9]+\.[0-9]+)-slim-bookworm$ ]] \
    || die "the Dockerfile's build stage is FROM '$rust_tag'; this script makes rust:X.Y-slim-bookworm"
rust_version="${BASH_REMATCH[1]}"
grep -qiE "^FROM[[:space:]]+$debian_tag([[:space:]]|$)" Dockerfile \
    || die "the Dockerfile's runtime stage is not FROM $debian_tag, the base this script makes"

work="$root/work"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

if have_image "$debian_tag"; then
    log "$debian_tag already made"
else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    mirror="$(apt-get indextargets --format '$(SITE) $(RELEASE)' | awk '$2 == "bookworm" { print $1; exit }')"
    security="$(apt-get indextargets --format '$(SITE) $(RELEASE)' | awk '$2 == "bookworm-security" { print $1; exit }')"
    [ -n "$mirror" ] || die "apt is configured with no mirror for bookworm (see /etc/apt/sources.list*)"
    log "debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$work" && mkdir -p "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    rootfs="$work/rootfs"
    # As the official image: deb822 sources with updates and security; no docs, man pages or
    # locales (dpkg keeps leaving them out of later installs), no package lists or caches.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    if [ -n "$security" ]; then
        cat >>"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
EOF
    # apt as the official image configures it: no package caches or downloaded .debs left in
    # a layer (an `apt-get update` would otherwise leave ~90 MB of them), no translations.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,groff,lintian}/* \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    : >"$rootfs/etc/hostname"
    tar -C "$rootfs" --numeric-owner -c . \
        | docker import --change 'CMD ["bash"]' - "$debian_tag" >/dev/null
    rm -rf "$work"
    log "made $debian_tag ($(docker image inspect --format '{{.Size}}' "$debian_tag") bytes)"
fi

if have_image "$rust_tag"; then
    log "$rust_tag already made"
else
    # This machine's toolchain of the version the tag names.
    sysroot=""
    if command -v rustup >/dev/null 2>&1; then
        sysroot="$(rustup run "$rust_version" rustc --print sysroot 2>/dev/null || true)"
    fi
    [ -n "$sysroot" ] || sysroot="$(rustc --print sysroot 2>/dev/null || true)"
    [ -n "$sysroot" ] && [ -x "$sysroot/bin/rustc" ] || die "no Rust toolchain on this machine to make $rust_tag from"
    full_version="$("$sysroot/bin/rustc" --version | awk '{ print $2 }')"
    [[ "$full_version" == "$rust_version".* ]] \
        || die "$rust_tag needs Rust $rust_version; this machine's toolchain at $sysroot is $full_version"
    host="$("$sysroot/bin/rustc" -vV | awk '$1 == "host:" { print $2 }')"
    toolchain="$full_version-$host"
    log "making $rust_tag from $debian_tag and the toolchain at $sysroot ($toolchain)"
    rm -rf "$work" && mkdir -p "$work/rustup/toolchains/$toolchain" "$work/cargo/bin"
    # The toolchain without its HTML docs (rust-docs, most of its size), which a build never reads.
    tar -C "$sysroot/" --exclude=./share/doc -c . | tar -C "$work/rustup/toolchains/$toolchain" -x
    cat >"$work/rustup/settings.toml" <<EOF
version = "12"
default_toolchain = "$toolchain"
profile = "minimal"
auto_self_update = "disable"
EOF
    if command -v rustup >/dev/null 2>&1; then
        # As the official image: rustup, and cargo, rustc… as its proxies.
        cp "$(command -v rustup)" "$work/cargo/bin/rustup"
        for tool in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb; do
            [ -e "$sysroot/bin/$tool" ] && ln -s rustup "$work/cargo/bin/$tool"
        done
    else
        for tool in "$sysroot"/bin/*; do
            ln -s "/usr/local/rustup/toolchains/$toolchain/bin/$(basename "$tool")" "$work/cargo/bin/"
        done
    fi
    # Writable by any user, as in the official image (and here, not in a layer of its own,
    # which would hold a second copy of the toolchain).
    chmod -R a+w "$work/rustup" "$work/cargo"
    cp /etc/ssl/certs/ca-certificates.crt "$work/ca-certificates.crt"
    cat >"$work/Dockerfile" <<EOF
FROM $debian_tag
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
# This machine's trust store, so cargo reaches the crate registry through its egress.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$full_version
EOF
    DOCKER_BUILDKIT=0 docker build --quiet --network host -t "$rust_tag" "$work" >/dev/null
    rm -rf "$work"
    docker run --rm --network host "$rust_tag" cargo --version >&2 \
        || die "$rust_tag was made but its cargo does not run"
    log "made $rust_tag ($(docker image inspect --format '{{.Size}}' "$rust_tag") bytes)"
fi

# Each change in src/ leaves the last build's untagged build stage behind (~110 MB): drop
# those older than a day, keeping the recent ones that make the next build quick.
docker image prune --force --filter until=24h >/dev/null

echo "$DOCKER_HOST"
