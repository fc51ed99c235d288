#!/usr/bin/env bash
# Regenerates the quick start's transcript in README.md from a real demo
# run, so the README shows what `make demo` prints today: everything
# between the `<!-- demo output` and `<!-- end of demo output -->` markers
# is replaced. tests/readme.rs checks that the commands and table headers
# still match.
# Usage: scripts/readme-demo.sh [path/to/conjoiner]   (`make readme`)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/conjoiner}
TRANSCRIPT=$(mktemp)
trap 'rm -f "$TRANSCRIPT" "$TRANSCRIPT.readme"' EXIT

# From the first command to the last output before the nodes stop.
scripts/demo.sh "$BIN" 2>&1 | sed -n '/^\$ conjoiner members/,/^== stopping/p' | sed '$d' \
    | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$TRANSCRIPT"

awk -v transcript="$TRANSCRIPT" '
    /^<!-- demo output/ {
        print; print "```console"
        while ((getline line < transcript) > 0) print line
        print "```"
        skipping = 1; next
    }
    /^<!-- end of demo output -->/ { skipping = 0 }
    !skipping { print }
' README.md >"$TRANSCRIPT.readme"
grep -q '^<!-- end of demo output -->' "$TRANSCRIPT.readme" || { echo "README.md has no demo markers" >&2; exit 1; }
mv "$TRANSCRIPT.readme" README.md
echo "README.md: demo transcript regenerated ($(wc -l <"$TRANSCRIPT") lines)"
