#!/usr/bin/env bash
# Lays out a local Home Assistant add-on that builds vehicle2mqtt from this clone:
#   addon/make-local.sh /addons/vehicle2mqtt_local
# then in Home Assistant: Settings → Add-ons → Add-on store → ⋮ → Check for updates, and
# install "vehicle2mqtt (local build)". The first build compiles the bridge (expect many
# minutes and about 1 GB of RAM on a Raspberry Pi); the published add-on needs neither.
set -euo pipefail
dest=${1:?usage: addon/make-local.sh DEST}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dest/source"
# The add-on's files, without `image:` (so the Supervisor builds the Dockerfile here).
sed -e '/^image:/d' -e '/^# Prebuilt by /d' -e '/^# To build from a clone/d' \
    -e 's/^name: vehicle2mqtt$/name: vehicle2mqtt (local build)/' \
    -e 's/^slug: vehicle2mqtt$/slug: vehicle2mqtt_local/' \
    "$repo/addon/config.yaml" > "$dest/config.yaml"
cp -r "$repo/addon/translations" "$dest/"
cp "$repo/addon/DOCS.md" "$repo/addon/CHANGELOG.md" "$repo/addon/icon.png" "$repo/addon/logo.png" "$dest/"
cp "$repo/addon/local/Dockerfile" "$dest/Dockerfile"
# The sources the build needs (Cargo.toml names the benches and tests it must find).
cp "$repo/Cargo.toml" "$repo/Cargo.lock" "$dest/source/"
cp -r "$repo/src" "$repo/benches" "$repo/tests" "$dest/source/"
echo "local add-on laid out in $dest"
