#!/usr/bin/env bash
# Installs a built package on this machine, checks what it put where, and purges it.
#   scripts/check-deb.sh target/debian/wattchdog_*.deb     (as root; CI runs it)
set -euo pipefail
deb=$1
dpkg -i "$deb"
trap 'dpkg --purge wattchdog >/dev/null 2>&1 || true' EXIT
wattchdog --version
wattchdog check-config /etc/wattchdog/wattchdog.toml
for f in /usr/share/man/man1/wattchdog.1.gz /usr/share/man/man1/wattchdog-run.1.gz \
         /usr/share/bash-completion/completions/wattchdog \
         /usr/share/zsh/vendor-completions/_wattchdog \
         /usr/share/fish/vendor_completions.d/wattchdog.fish \
         /usr/share/doc/wattchdog/deploy.md; do
  test -s "$f" || { echo "missing: $f"; exit 1; }
done
getent passwd wattchdog >/dev/null || { echo "no wattchdog user"; exit 1; }
for f in /etc/wattchdog/token /etc/wattchdog/wattchdog.toml; do
  [ "$(stat -c '%a %U %G' "$f")" = "640 root wattchdog" ] || { echo "$f: $(stat -c '%a %U %G' "$f")"; exit 1; }
done
unit=$(dpkg -L wattchdog | grep '/wattchdog\.service$')
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$unit"
else
  echo "systemd-analyze not installed: unit not verified"
fi
dpkg --purge wattchdog
trap - EXIT
! test -e /usr/bin/wattchdog || { echo "purge left the binary"; exit 1; }
! test -e /etc/wattchdog/token || { echo "purge left the token"; exit 1; }
echo "package ok: $deb"
