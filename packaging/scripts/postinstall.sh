#!/bin/sh
# osquery-aws-logger postinstall (deb postinst / rpm %post): make osqueryd autoload the extension.
#
# Adds the .ext path to osqueryd's --extensions_autoload file (default
# /etc/osquery/extensions.load) exactly once, creating the file and /etc/osquery if needed and
# keeping every other line as it was. Idempotent: it runs on every install, upgrade and
# reinstall (deb: configure / abort-*; rpm: $1 = 1 or 2) and never adds a second copy.
#
# OSQUERY_EXTENSIONS_LOAD overrides the file, for hosts that run osqueryd with another
# --extensions_autoload (and for the package tests).
set -eu

EXT=/opt/osquery-aws-logger/osquery-aws-logger.ext
LOAD=${OSQUERY_EXTENSIONS_LOAD:-/etc/osquery/extensions.load}

umask 022
mkdir -p "$(dirname "$LOAD")"
[ -e "$LOAD" ] || : > "$LOAD"

# osqueryd trims each line before using it, so a copy with spaces around it counts as present.
if awk -v want="$EXT" '
    { line = $0; gsub(/^[ \t\r]+|[ \t\r]+$/, "", line); if (line == want) found = 1 }
    END { exit found ? 0 : 1 }' "$LOAD"; then
    exit 0
fi

# Append after a final newline, so the path never joins a last line that lacks one.
if [ -s "$LOAD" ] && [ "$(tail -c 1 "$LOAD" | wc -l)" -eq 0 ]; then
    printf '\n' >> "$LOAD"
fi
printf '%s\n' "$EXT" >> "$LOAD"
echo "osquery-aws-logger: added $EXT to $LOAD; restart osqueryd with --logger_plugin set" \
     "(examples in /usr/share/doc/osquery-aws-logger/)"
exit 0
