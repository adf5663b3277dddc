#!/usr/bin/env bash
# Builds the Debian package into target/debian/ with crates.io's cargo-deb
# (`cargo install cargo-deb`).
#   scripts/package-deb.sh [BINARY]
# BINARY: the wattchdog binary to package; default: a fresh release build. CI passes the
# binary its tests already built (one build, one profile).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release --locked
  bin=target/release/wattchdog
fi
assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
# Stripped: the debug information stays with the build (a test-profile binary has
# hundreds of megabytes of it).
strip -o "$assets/wattchdog" "$bin"
# Man pages and completions come from the command line's own definition.
"$bin" manpages "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash > "$assets/completions/wattchdog"
"$bin" completions zsh > "$assets/completions/_wattchdog"
"$bin" completions fish > "$assets/completions/wattchdog.fish"
cargo deb --no-build --locked --output target/debian/
ls target/debian/*.deb
