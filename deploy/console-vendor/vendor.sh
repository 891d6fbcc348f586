#!/bin/sh
# Copies the console's third-party browser libraries into api/static/vendor/ from npm, at the
# versions pinned in package.json / package-lock.json (integrity-checked by `npm ci`). The files
# are committed and shipped in the wheel (pyproject: api = ["static/**/*"]); the console never
# fetches a library at run time. Run after changing a version here:
#   sh deploy/console-vendor/vendor.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/../../api/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund)
src="$work/node_modules/leaflet"
rm -rf "$dest/leaflet"
mkdir -p "$dest/leaflet/images"
cp "$src/dist/leaflet.js" "$src/dist/leaflet.css" "$src/LICENSE" "$dest/leaflet/"
cp "$src/dist/images/"*.png "$dest/leaflet/images/"
version=$(node -p "require('$src/package.json').version")
printf 'leaflet %s (npm, BSD-2-Clause: LICENSE)\n' "$version" > "$dest/leaflet/VERSION"
echo "vendored leaflet $version into $dest/leaflet"
