#!/usr/bin/env bash
# A local stand-in for the Dockerfile's base image (python:3.12.x-slim-bookworm), for
# `make docker-test` on a machine that reaches Debian's mirror and the package index but no
# image registry. Never used by the real build: only when the real image cannot be pulled.
#
#   docker/test/standin-base.sh IMAGE_NAME
#
# Debian bookworm (debootstrap --variant=minbase, the libraries CPython links) plus this
# machine's CPython 3.12 (pyenv's, or whatever `python3.12` is) copied to /usr/local, its
# site-packages emptied and pip from ensurepip; imported with `docker import` under IMAGE_NAME.
# The stand-in trusts what this machine trusts (its CA bundle, e.g. a TLS-intercepting egress
# proxy's CA) and says so in PIP_CERT / SSL_CERT_FILE, so the build's pip reaches the index.
set -euo pipefail
image=${1:?usage: standin-base.sh IMAGE_NAME}
cache=${CRAWLGUARD_DOCKER_CACHE:-/var/cache/crawlguard-docker-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=${STANDIN_PYTHON:-$(command -v python3.12)}
# pyenv's shim is a script: ask the interpreter where it lives.
prefix=$("$python" -c 'import sys; print(sys.base_prefix)')
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = 3.12 ] || { echo "standin-base: $python is Python $version, need 3.12" >&2; exit 1; }

mkdir -p "$cache"
rootfs="$cache/rootfs-bookworm"
if [ ! -e "$rootfs/.debootstrap-done" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    rm -rf "$rootfs" "$rootfs.partial"
    echo "standin-base: debootstrap bookworm from $mirror (about 2 minutes; cached in $cache)"
    debootstrap --variant=minbase \
        --include=ca-certificates,libssl3,libffi8,libsqlite3-0,libuuid1,libbz2-1.0,liblzma5,libreadline8,libncursesw6,zlib1g,libexpat1,netbase,tzdata \
        bookworm "$rootfs.partial" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    touch "$rootfs.partial/.debootstrap-done"
    mv "$rootfs.partial" "$rootfs"  # only a finished tree is reused
fi

work=$(mktemp -d "$cache/standin.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -a "$rootfs" "$work/root"
root="$work/root"
rm -f "$root/.debootstrap-done"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# CPython: everything but its site-packages (this machine's tools), tests and IDLE/tk.
stdlib="lib/python$version"
tar -C "$prefix" --exclude="$stdlib/site-packages/*" --exclude="$stdlib/test" \
    --exclude="$stdlib/idlelib" --exclude="$stdlib/tkinter" --exclude="__pycache__" \
    --exclude="bin/*" -cf - . | tar -C "$root/usr/local" -xf -
cp -a "$prefix/bin/python$version" "$root/usr/local/bin/"
ln -sf "python$version" "$root/usr/local/bin/python3"
ln -sf "python$version" "$root/usr/local/bin/python"
# The shared libpython: found through ld.so.cache (/usr/local/lib), not the build's rpath.
chroot "$root" /sbin/ldconfig
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
PIP_ROOT_USER_ACTION=ignore chroot "$root" /usr/local/bin/python3 -m ensurepip --default-pip >/dev/null
chroot "$root" /usr/local/bin/python -c 'import ssl, sqlite3, ctypes, uuid, lzma, bz2, zlib'

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL org.crawlguard.standin=true' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
echo "standin-base: imported $image (Debian bookworm minbase + CPython from $prefix)"
